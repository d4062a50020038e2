//! The container, through the Docker API. (to be written)

use ferry_core::config::{ContainerConfig, ServiceConfig};
use ferry_core::status::{ResourceStatus, State};

use crate::error::{HelperError, Result};

/// `<svc>.container.<n>` for rid `container#<n>`.
pub fn container_name(service: &str, rid: &str) -> String {
    let n = rid.split_once('#').map(|(_, n)| n).unwrap_or(rid);
    format!("{service}.container.{n}")
}

pub async fn status(_svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> ResourceStatus {
    ResourceStatus::new(rid, State::Down, &c.run_image).with_comment("docker daemon is not running")
}

pub async fn start(svc: &ServiceConfig, rid: &str, _c: &ContainerConfig) -> Result<Vec<String>> {
    Err(HelperError::failed(format!(
        "{}: {rid}: not implemented",
        svc.name
    )))
}

pub async fn stop(svc: &ServiceConfig, rid: &str, _c: &ContainerConfig) -> Result<Vec<String>> {
    Err(HelperError::failed(format!(
        "{}: {rid}: not implemented",
        svc.name
    )))
}
