//! `ferry status`: the helper's resource states, merged as DESIGN §4 says,
//! shown as the seed's tree or as JSON.

use ferry_core::config::ServiceConfig;
use ferry_core::status::ServiceStatus;

use crate::client::Helper;
use crate::error::Result;

pub async fn service_status(h: &Helper, cfg: &ServiceConfig, node: &str) -> Result<ServiceStatus> {
    let resources = h.service(&cfg.name).await?.status().await?;
    let sync = crate::sync::status(cfg, node).await;
    Ok(ServiceStatus::new(&cfg.name, node, resources, sync))
}
