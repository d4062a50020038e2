//! ip: add (the helper probes the wire first), announce; remove.

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let ip = h.ip(svc, rid).await?;
    log.call(rid, ip.add()).await?;
    log.call(rid, ip.announce()).await?;
    Ok(())
}

pub async fn stop(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let ip = h.ip(svc, rid).await?;
    log.call(rid, ip.remove()).await?;
    Ok(())
}
