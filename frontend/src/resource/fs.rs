//! fs: mount (the helper fscks first); unmount.

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let fs = h.fs(svc, rid).await?;
    log.call(rid, fs.mount()).await?;
    Ok(())
}

pub async fn stop(h: &Helper, svc: &str, rid: &str, log: &Log) -> Result<()> {
    let fs = h.fs(svc, rid).await?;
    log.call(rid, fs.unmount()).await?;
    Ok(())
}
