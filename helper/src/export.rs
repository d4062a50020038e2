//! Making the bus match the configs: one object per service and per
//! resource, exported after a (re)load and removed with their service.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_core::config::{Kind, ServiceConfig};
use ferry_core::dbus::{resource_path, service_path};
use ferry_core::status::State;
use tracing::{error, info, warn};
use zbus::object_server::ObjectServer;

use crate::container::ContainerObject;
use crate::ctx::ResCtx;
use crate::error::Result;
use crate::fs::FsObject;
use crate::ip::IpObject;
use crate::lease::LeaseObject;
use crate::registry::{Kept, Registry};
use crate::service::ServiceObject;
use crate::vg::VgObject;

/// Re-read the configs and make the exported objects match them.
///
/// A service whose file turned bad, untrusted or went away is kept, with
/// its last good config, while anything of it is up here: the helper finds
/// what it mounted and started through its config, and forgetting it would
/// leave Pacemaker and `ferry stop` without a way to stop it. Its status
/// then carries a `config` entry (warn, why). It is let go at the first
/// reload that finds nothing of it up here.
pub async fn reload(reg: &Arc<Registry>, server: &ObjectServer) -> Result<Vec<String>> {
    let _serial = reg.reload_lock().await;
    let scan = reg.read_dir();
    let old = reg.services();
    let mut new = scan.valid;
    let mut kept = HashMap::new();
    for (name, cfg) in &old {
        if new.contains_key(name) {
            continue;
        }
        let file = reg.dir().join(format!("{name}.conf")).display().to_string();
        let why = scan
            .rejected
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{file}: no such file any more"));
        let up = up_here(reg, cfg).await;
        if up.is_empty() {
            info!(service = %name, "service unloaded: {why}");
            continue;
        }
        let reason = format!(
            "{why}; running with the last good config (sha256 {}) while {} up here: fix the \
             file, then `ferry reload`",
            &cfg.checksum()[..12],
            up.join(", ")
        );
        warn!(service = %name, "service kept: {reason}");
        new.insert(name.clone(), cfg.clone());
        kept.insert(name.clone(), Kept { file, reason });
    }
    reg.swap_services(new.clone(), kept)?;
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

/// The service's resources that are not down here ("ip#1 is up"); a
/// status that cannot be had counts as up: never forget on a guess.
async fn up_here(reg: &Registry, cfg: &Arc<ServiceConfig>) -> Vec<String> {
    match crate::service::statuses_of(reg, cfg.clone()).await {
        Ok(st) => st
            .iter()
            .filter(|s| s.state_here() != State::Down && s.state_here() != State::NotApplicable)
            .map(|s| format!("{} is {}", s.rid, s.state))
            .collect(),
        Err(e) => vec![format!("its status is unknown ({})", e.message())],
    }
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
