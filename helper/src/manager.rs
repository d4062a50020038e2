//! `io.ferry.Helper1.Manager` on the root object: the node's services, and
//! installing a config pushed by a peer.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;

use ferry_core::config;
use ferry_core::dbus::RELOAD_ACTION;
use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{interface, Connection};

use crate::audit::{Outcome, Record};
use crate::auth::privileged;
use crate::error::{HelperError, Result};
use crate::registry::Registry;

pub struct ManagerObject {
    pub reg: Arc<Registry>,
}

/// Validate, then replace `<dir>/<service>.conf` atomically: a reader sees
/// the old file or the new one, never a mix, and a bad text replaces nothing.
fn install(reg: &Registry, service: &str, text: &str) -> Result<String> {
    if !config::valid_service_name(service) {
        return Err(HelperError::InvalidArgument(format!(
            "'{service}' is not a valid service name"
        )));
    }
    let dir = reg.dir();
    let path = dir.join(format!("{service}.conf"));
    let cfg = config::parse_service(&path.display().to_string(), text)
        .map_err(|e| HelperError::InvalidConfig(e.to_string()))?;
    if !cfg.nodes.iter().any(|n| n == reg.node()) {
        return Err(HelperError::InvalidConfig(format!(
            "{}: node {} is not one of the service's nodes ({})",
            path.display(),
            reg.node(),
            cfg.nodes.join(" ")
        )));
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{service}.conf.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(cfg.checksum())
}

/// A config is replaced only where the service is stopped: the helper
/// finds what it mounted and started through the config, so changing it
/// under a running service could leave mounts and addresses it no longer
/// knows about. (Sync pushes from the node running the service to the
/// others, so this costs nothing in normal use.)
async fn refuse_while_running(reg: &Registry, service: &str) -> Result<()> {
    let statuses = match crate::service::resource_statuses(reg, service).await {
        Ok(s) => s,
        Err(HelperError::UnknownService(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let running: Vec<String> = statuses
        .iter()
        // A lease another node holds shows as warn, yet nothing of the
        // service is here: that is down for this node.
        .filter(|s| s.state_here() != ferry_core::status::State::Down)
        .map(|s| format!("{} is {}", s.rid, s.state))
        .collect();
    if running.is_empty() {
        Ok(())
    } else {
        Err(HelperError::Busy(format!(
            "service '{service}' is not stopped on {} ({}): its config is replaced only where it is down",
            reg.node(),
            running.join(", ")
        )))
    }
}

#[interface(name = "io.ferry.Helper1.Manager")]
impl ManagerObject {
    async fn list_services(&self) -> Vec<String> {
        self.reg.service_names()
    }

    /// Re-read the config directory, behind the polkit action
    /// io.ferry.config.reload: the files are root's, but when the helper
    /// acts on a change of them is not any caller's choice. A running
    /// service whose file went bad is kept (see crate::export::reload).
    async fn reload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<Vec<String>> {
        let who = crate::auth::identify_and_authorize_node(&self.reg, conn, &header, RELOAD_ACTION)
            .await?;
        let done = crate::export::reload(&self.reg, server).await;
        match &done {
            Ok(names) => Record::new(Some(&who), RELOAD_ACTION, "", "", Outcome::Ok)
                .note(&format!("services: {}", names.join(" ")))
                .log(),
            Err(e) => Record::new(Some(&who), RELOAD_ACTION, "", "", Outcome::Failed)
                .error(e)
                .log(),
        }
        done
    }

    async fn install_config(
        &self,
        service: String,
        text: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<String> {
        let reg = self.reg.clone();
        privileged(
            &self.reg,
            conn,
            &header,
            "io.ferry.config.install",
            &service,
            "",
            || async {
                refuse_while_running(&reg, &service).await?;
                let sum = install(&reg, &service, &text)?;
                crate::export::reload(&reg, server).await?;
                Ok(sum)
            },
        )
        .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn node_name(&self) -> String {
        self.reg.node().to_string()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
}
