//! What the helper knows: the validated service configs read from its
//! root-owned directory, the objects exported for them, and one lock per
//! service that serializes mutating actions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, RwLock};

use ferry_core::config::{self, Kind, KindConfig, Resource, ServiceConfig};
use ferry_core::dbus::{resource_path, service_path};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{error, info};
use zbus::object_server::ObjectServer;
use zbus_polkit::policykit1::AuthorityProxy;

use crate::container::ContainerObject;
use crate::error::{HelperError, Result};
use crate::fs::FsObject;
use crate::ip::IpObject;
use crate::service::ServiceObject;
use crate::vg::VgObject;

pub struct Registry {
    dir: PathBuf,
    node: String,
    authority: AuthorityProxy<'static>,
    services: RwLock<BTreeMap<String, Arc<ServiceConfig>>>,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Serializes config reloads, so two never interleave their exports.
    reload: Mutex<()>,
    /// Who holds each service's caller lock (Service.Lock), see crate::lock.
    holds: crate::lock::Locks,
}

/// What every resource object carries: which service and rid it stands for.
/// The config itself is looked up at each call, so a reload takes effect.
#[derive(Clone)]
pub struct ResCtx {
    pub reg: Arc<Registry>,
    pub service: String,
    pub rid: String,
}

impl ResCtx {
    pub fn service_config(&self) -> Result<Arc<ServiceConfig>> {
        self.reg.service(&self.service)
    }

    /// The service's config and this resource's own settings.
    pub fn config<T: KindConfig>(&self) -> Result<(Arc<ServiceConfig>, T)> {
        let (svc, res) = self.resource()?;
        let c = T::from_resource(res.config).ok_or_else(|| {
            HelperError::failed(format!(
                "{} is not a {} resource",
                self.rid,
                T::KIND.as_str()
            ))
        })?;
        Ok((svc, c))
    }

    pub fn resource(&self) -> Result<(Arc<ServiceConfig>, Resource)> {
        let svc = self.service_config()?;
        let res = svc.resource(&self.rid).cloned().ok_or_else(|| {
            HelperError::UnknownService(format!(
                "service '{}' has no resource {} any more",
                self.service, self.rid
            ))
        })?;
        Ok((svc, res))
    }
}

impl Registry {
    pub fn new(dir: PathBuf, node: String, authority: AuthorityProxy<'static>) -> Self {
        Registry {
            dir,
            node,
            authority,
            services: RwLock::new(BTreeMap::new()),
            locks: StdMutex::new(HashMap::new()),
            reload: Mutex::new(()),
            holds: crate::lock::Locks::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn authority(&self) -> &AuthorityProxy<'static> {
        &self.authority
    }

    pub fn holds(&self) -> &crate::lock::Locks {
        &self.holds
    }

    pub fn service(&self, name: &str) -> Result<Arc<ServiceConfig>> {
        self.services
            .read()
            .map_err(|_| HelperError::failed("registry lock poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| {
                HelperError::UnknownService(format!(
                    "no service '{name}' on {} (no valid {}/{name}.conf)",
                    self.node,
                    self.dir.display()
                ))
            })
    }

    pub fn service_names(&self) -> Vec<String> {
        self.services
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub async fn lock_service(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = match self.locks.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            locks.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Read every `<svc>.conf` of the directory. Invalid files are logged and
    /// left out: a broken config must never half-export a service.
    fn read_dir(&self) -> BTreeMap<String, Arc<ServiceConfig>> {
        let mut found = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                error!("cannot read {}: {e}", self.dir.display());
                return found;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = config::service_name_of(&path) else {
                continue;
            };
            if let Err(why) = trusted_file(&path) {
                error!("{}: {why}: service not loaded", path.display());
                continue;
            }
            match config::load_service(&path) {
                Ok(cfg) => {
                    found.insert(name, Arc::new(cfg));
                }
                Err(errs) => {
                    for e in errs.0 {
                        error!("invalid config, service not loaded: {e}");
                    }
                }
            }
        }
        found
    }

    /// Re-read the configs and make the exported objects match them.
    pub async fn reload(self: &Arc<Self>, server: &ObjectServer) -> Result<Vec<String>> {
        let _serial = self.reload.lock().await;
        let new = self.read_dir();
        let old = self
            .services
            .read()
            .map_err(|_| HelperError::failed("registry lock poisoned"))?
            .clone();
        for (name, cfg) in &old {
            if new.get(name).map(|n| n.text != cfg.text).unwrap_or(true) {
                unexport(server, cfg).await;
            }
        }
        *self
            .services
            .write()
            .map_err(|_| HelperError::failed("registry lock poisoned"))? = new.clone();
        for (name, cfg) in &new {
            if old.get(name).map(|o| o.text != cfg.text).unwrap_or(true) {
                self.export(server, cfg).await?;
                info!(service = %name, checksum = %cfg.checksum(), "service loaded");
            }
        }
        Ok(new.keys().cloned().collect())
    }

    async fn export(self: &Arc<Self>, server: &ObjectServer, cfg: &ServiceConfig) -> Result<()> {
        let path = service_path(&cfg.name);
        server
            .at(
                path.as_str(),
                ServiceObject {
                    reg: self.clone(),
                    service: cfg.name.clone(),
                },
            )
            .await?;
        for r in &cfg.resources {
            let ctx = ResCtx {
                reg: self.clone(),
                service: cfg.name.clone(),
                rid: r.rid.clone(),
            };
            let path = resource_path(&cfg.name, &r.rid);
            let path = path.as_str();
            match r.kind() {
                Kind::Ip => drop(server.at(path, IpObject { ctx }).await?),
                Kind::Vg => drop(server.at(path, VgObject { ctx }).await?),
                Kind::Fs => drop(server.at(path, FsObject { ctx }).await?),
                Kind::Container => drop(server.at(path, ContainerObject { ctx }).await?),
            };
        }
        Ok(())
    }
}

/// A config tells root what to mount and run: it must be a regular file
/// (not a symlink) owned by root that nobody else may write.
fn trusted_file(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o}: writable by group or others",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

async fn unexport(server: &ObjectServer, cfg: &ServiceConfig) {
    for r in &cfg.resources {
        let path = resource_path(&cfg.name, &r.rid);
        let path = path.as_str();
        let removed = match r.kind() {
            Kind::Ip => server.remove::<IpObject, _>(path).await,
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

impl ResCtx {
    /// Run a mutating method body behind polkit and the audit log
    /// (see [`crate::auth::privileged`]).
    pub async fn privileged<T, F, Fut>(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
        action: &str,
        body: F,
    ) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        crate::auth::privileged(
            &self.reg,
            conn,
            header,
            action,
            &self.service,
            &self.rid,
            body,
        )
        .await
    }
}
