//! lease: take the service's disk lease before anything touches its disks;
//! give it back once they are let go (the helper checks both).

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let lease = h.lease(svc, rid).await?;
    log.call(rid, lease.acquire()).await?;
    Ok(())
}

pub async fn stop(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let lease = h.lease(svc, rid).await?;
    log.call(rid, lease.release()).await?;
    Ok(())
}
