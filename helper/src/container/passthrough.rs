//! `docker` subcommands run for a caller. (to be written)

use std::os::fd::OwnedFd;

use ferry_core::config::ServiceConfig;

use crate::error::{HelperError, Result};

pub async fn run(
    svc: &ServiceConfig,
    _args: &[String],
    _stdin: OwnedFd,
    _stdout: OwnedFd,
    _stderr: OwnedFd,
) -> Result<i32> {
    Err(HelperError::failed(format!(
        "{}: docker passthrough not implemented",
        svc.name
    )))
}
