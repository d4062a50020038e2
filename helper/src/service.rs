//! `io.ferry.Helper1.Service`: one object per service, read-only.

use std::sync::Arc;

use ferry_core::config::ResourceConfig;
use ferry_core::status::ResourceStatus;
use zbus::interface;

use crate::error::Result;
use crate::registry::Registry;

pub struct ServiceObject {
    pub reg: Arc<Registry>,
    pub service: String,
}

/// Every resource's status, in start order.
pub async fn resource_statuses(reg: &Registry, service: &str) -> Result<Vec<ResourceStatus>> {
    let svc = reg.service(service)?;
    let mut out = Vec::with_capacity(svc.resources.len());
    for r in &svc.resources {
        out.push(match &r.config {
            ResourceConfig::Ip(c) => crate::ip::status(&r.rid, c).await,
            ResourceConfig::Lease(c) => crate::lease::status(reg, &svc, &r.rid, c).await,
            ResourceConfig::Vg(c) => crate::vg::status(reg.node(), &r.rid, c).await,
            ResourceConfig::Fs(c) => crate::fs::status(&r.rid, c).await,
            ResourceConfig::Container(c) => crate::container::status(&svc, &r.rid, c).await,
        });
    }
    Ok(out)
}

#[interface(name = "io.ferry.Helper1.Service")]
impl ServiceObject {
    /// Every resource's status, in start order: `a(sssas)` = rid, state, label, comments.
    async fn status(&self) -> Result<Vec<ResourceStatus>> {
        resource_statuses(&self.reg, &self.service).await
    }

    /// The config text as installed on this node, and its sha256.
    async fn config(&self) -> Result<(String, String)> {
        let svc = self.reg.service(&self.service)?;
        Ok((svc.text.clone(), svc.checksum()))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.service.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn nodes(&self) -> Vec<String> {
        self.reg
            .service(&self.service)
            .map(|s| s.nodes.clone())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn checksum(&self) -> String {
        self.reg
            .service(&self.service)
            .map(|s| s.checksum())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn resources(&self) -> Vec<String> {
        self.reg
            .service(&self.service)
            .map(|s| s.resources.iter().map(|r| r.rid.clone()).collect())
            .unwrap_or_default()
    }
}
