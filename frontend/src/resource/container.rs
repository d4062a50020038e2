//! container: the service's private docker daemon first (when it has a
//! data dir), then the container; stop the container, then the daemon once
//! no container of the service is left. A podman container has no daemon.

use ferry_core::config::{ContainerRuntime, ResourceConfig, ServiceConfig};

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &ServiceConfig, rid: &str, log: &Log) -> Result<()> {
    let c = h.container(&svc.name, rid).await?;
    if has_daemon(svc, rid) {
        log.call(rid, c.start_daemon()).await?;
    }
    log.call(rid, c.start()).await?;
    Ok(())
}

pub async fn stop(
    h: &Helper,
    svc: &ServiceConfig,
    rid: &str,
    last_container: bool,
    log: &Log,
) -> Result<()> {
    let c = h.container(&svc.name, rid).await?;
    log.call(rid, c.stop()).await?;
    if last_container && has_daemon(svc, rid) {
        log.call(rid, c.stop_daemon()).await?;
    }
    Ok(())
}

/// A private dockerd runs the container: docker with docker_data_dir.
pub fn has_daemon(svc: &ServiceConfig, rid: &str) -> bool {
    let docker = matches!(
        svc.resource(rid).map(|r| &r.config),
        Some(ResourceConfig::Container(c)) if c.runtime == ContainerRuntime::Docker
    );
    docker && svc.docker_data_dir.is_some()
}
