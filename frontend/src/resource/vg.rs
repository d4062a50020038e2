//! vg: take the host tag, reserve (scsireserv only), activate; the reverse
//! to stop.

use ferry_core::config::VgConfig;

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &str, rid: &str, c: &VgConfig, log: &Log) -> Result<()> {
    let vg = h.vg(svc, rid).await?;
    log.call(rid, vg.tag()).await?;
    if c.scsireserv {
        log.call(rid, vg.reserve(false)).await?;
    }
    log.call(rid, vg.activate()).await?;
    Ok(())
}

pub async fn stop(h: &Helper, svc: &str, rid: &str, c: &VgConfig, log: &Log) -> Result<()> {
    let vg = h.vg(svc, rid).await?;
    log.call(rid, vg.deactivate()).await?;
    if c.scsireserv {
        log.call(rid, vg.release()).await?;
    }
    log.call(rid, vg.untag()).await?;
    Ok(())
}
