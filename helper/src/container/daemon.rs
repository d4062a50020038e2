//! The service's private containerd + dockerd. (to be written)

use ferry_core::config::ServiceConfig;

use crate::error::{HelperError, Result};

pub async fn start(svc: &ServiceConfig) -> Result<Vec<String>> {
    Err(HelperError::failed(format!(
        "{}: private docker daemon not implemented",
        svc.name
    )))
}

pub async fn stop(svc: &ServiceConfig) -> Result<Vec<String>> {
    Err(HelperError::failed(format!(
        "{}: private docker daemon not implemented",
        svc.name
    )))
}
