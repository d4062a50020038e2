//! What starting and stopping each kind of resource means in helper calls.
//! The order across kinds is the config's (core::config); inside a kind it
//! is here.

pub mod container;
pub mod fs;
pub mod ip;
pub mod lease;
pub mod vg;

use ferry_core::config::{Resource, ResourceConfig, ServiceConfig};

use crate::client::Helper;
use crate::error::Result;
use crate::log::Log;

pub async fn start(h: &Helper, svc: &ServiceConfig, r: &Resource, log: &Log) -> Result<()> {
    match &r.config {
        ResourceConfig::Ip(_) => ip::start(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Lease(_) => lease::start(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Vg(c) => vg::start(h, &svc.name, &r.rid, c, log).await,
        ResourceConfig::Fs(_) => fs::start(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Container(_) => container::start(h, svc, &r.rid, log).await,
    }
}

/// `last_container`: no other container of the service is left running
/// after this one, so its private daemon can go too.
pub async fn stop(
    h: &Helper,
    svc: &ServiceConfig,
    r: &Resource,
    last_container: bool,
    log: &Log,
) -> Result<()> {
    match &r.config {
        ResourceConfig::Ip(_) => ip::stop(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Lease(_) => lease::stop(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Vg(c) => vg::stop(h, &svc.name, &r.rid, c, log).await,
        ResourceConfig::Fs(_) => fs::stop(h, &svc.name, &r.rid, log).await,
        ResourceConfig::Container(_) => container::stop(h, svc, &r.rid, last_container, log).await,
    }
}
