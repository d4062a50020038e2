//! Making the bus match the configs: one object per service and per
//! resource, exported after a (re)load and removed with their service.

use std::sync::Arc;

use ferry_core::config::{Kind, ServiceConfig};
use ferry_core::dbus::{resource_path, service_path};
use tracing::{error, info};
use zbus::object_server::ObjectServer;

use crate::container::ContainerObject;
use crate::ctx::ResCtx;
use crate::error::Result;
use crate::fs::FsObject;
use crate::ip::IpObject;
use crate::lease::LeaseObject;
use crate::registry::Registry;
use crate::service::ServiceObject;
use crate::vg::VgObject;

/// Re-read the configs and make the exported objects match them.
pub async fn reload(reg: &Arc<Registry>, server: &ObjectServer) -> Result<Vec<String>> {
    let _serial = reg.reload_lock().await;
    let (old, new) = reg.swap_services()?;
    for (name, cfg) in &old {
        if new.get(name).map(|n| n.text != cfg.text).unwrap_or(true) {
            unexport(server, cfg).await;
        }
    }
    for (name, cfg) in &new {
        if old.get(name).map(|o| o.text != cfg.text).unwrap_or(true) {
            export(reg, server, cfg).await?;
            crate::lease::join_in_background(reg, cfg);
            info!(service = %name, checksum = %cfg.checksum(), "service loaded");
        }
    }
    Ok(new.keys().cloned().collect())
}

async fn export(reg: &Arc<Registry>, server: &ObjectServer, cfg: &ServiceConfig) -> Result<()> {
    let path = service_path(&cfg.name);
    server
        .at(
            path.as_str(),
            ServiceObject {
                reg: reg.clone(),
                service: cfg.name.clone(),
            },
        )
        .await?;
    for r in &cfg.resources {
        let ctx = ResCtx {
            reg: reg.clone(),
            service: cfg.name.clone(),
            rid: r.rid.clone(),
        };
        let path = resource_path(&cfg.name, &r.rid);
        let path = path.as_str();
        match r.kind() {
            Kind::Ip => drop(server.at(path, IpObject { ctx }).await?),
            Kind::Lease => drop(server.at(path, LeaseObject { ctx }).await?),
            Kind::Vg => drop(server.at(path, VgObject { ctx }).await?),
            Kind::Fs => drop(server.at(path, FsObject { ctx }).await?),
            Kind::Container => drop(server.at(path, ContainerObject { ctx }).await?),
        };
    }
    Ok(())
}

async fn unexport(server: &ObjectServer, cfg: &ServiceConfig) {
    for r in &cfg.resources {
        let path = resource_path(&cfg.name, &r.rid);
        let path = path.as_str();
        let removed = match r.kind() {
            Kind::Ip => server.remove::<IpObject, _>(path).await,
            Kind::Lease => server.remove::<LeaseObject, _>(path).await,
            Kind::Vg => server.remove::<VgObject, _>(path).await,
            Kind::Fs => server.remove::<FsObject, _>(path).await,
            Kind::Container => server.remove::<ContainerObject, _>(path).await,
        };
        if let Err(e) = removed {
            error!("cannot unexport {path}: {e}");
        }
    }
    let path = service_path(&cfg.name);
    if let Err(e) = server.remove::<ServiceObject, _>(path.as_str()).await {
        error!("cannot unexport {path}: {e}");
    }
}
