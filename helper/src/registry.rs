//! What the helper knows: the validated service configs read from its
//! root-owned directory, and one lock per service that serializes mutating
//! actions. It knows no driver: exporting objects is `export`'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, RwLock};

use ferry_core::config::{self, NodeConfig, ServiceConfig};
use ferry_core::status::{ResourceStatus, State, CONFIG_RID};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::error;
use zbus_polkit::policykit1::AuthorityProxy;

use crate::error::{HelperError, Result};

pub struct Registry {
    dir: PathBuf,
    node: String,
    node_conf: NodeConfig,
    authority: AuthorityProxy<'static>,
    services: RwLock<BTreeMap<String, Arc<ServiceConfig>>>,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Serializes config reloads, so two never interleave their exports.
    reload: Mutex<()>,
    /// Who holds each service's caller lock (Service.Lock), see crate::lock.
    holds: crate::lock::Locks,
    /// What status keeps of the containers between actions (crate::status_cache).
    status_cache: crate::status_cache::StatusCache,
    /// Services run with their last good config because their file turned
    /// bad, untrusted or went away while something of them was up here:
    /// why, per service.
    kept: StdMutex<HashMap<String, Kept>>,
}

/// A service kept with its last good config (see `Registry::kept`).
#[derive(Clone, Debug)]
pub struct Kept {
    pub file: String,
    pub reason: String,
}

/// What reading the config directory found: the valid, trusted configs,
/// and why each other file was left out (by service name).
pub struct DirScan {
    pub valid: BTreeMap<String, Arc<ServiceConfig>>,
    pub rejected: HashMap<String, String>,
}

impl Registry {
    pub fn new(dir: PathBuf, node_conf: NodeConfig, authority: AuthorityProxy<'static>) -> Self {
        Registry {
            dir,
            node: node_conf.node_name(),
            node_conf,
            authority,
            services: RwLock::new(BTreeMap::new()),
            locks: StdMutex::new(HashMap::new()),
            reload: Mutex::new(()),
            holds: crate::lock::Locks::default(),
            status_cache: crate::status_cache::StatusCache::default(),
            kept: StdMutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's settings from ferry.conf (host ids for leases).
    pub fn node_conf(&self) -> &NodeConfig {
        &self.node_conf
    }

    pub fn authority(&self) -> &AuthorityProxy<'static> {
        &self.authority
    }

    pub fn holds(&self) -> &crate::lock::Locks {
        &self.holds
    }

    pub fn status_cache(&self) -> &crate::status_cache::StatusCache {
        &self.status_cache
    }

    /// The status entry of a service run with its last good config: warn,
    /// the file, why (see [`ferry_core::status::CONFIG_RID`]).
    pub fn config_problem(&self, service: &str) -> Option<ResourceStatus> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(service).map(|k| {
            ResourceStatus::new(CONFIG_RID, State::Warn, k.file.clone()).with_comment(&k.reason)
        })
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

    /// Read every `<svc>.conf` of the directory. Invalid and untrusted
    /// files are logged and left out (with the reason): a broken config must
    /// never half-export a service.
    pub fn read_dir(&self) -> DirScan {
        let mut scan = DirScan {
            valid: BTreeMap::new(),
            rejected: HashMap::new(),
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                error!("cannot read {}: {e}", self.dir.display());
                return scan;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = config::service_name_of(&path) else {
                continue;
            };
            if let Err(why) = trusted_file(&path) {
                error!("{}: {why}: service not loaded", path.display());
                scan.rejected
                    .insert(name, format!("{}: {why}", path.display()));
                continue;
            }
            match config::load_service(&path) {
                Ok(cfg) => {
                    scan.valid.insert(name, Arc::new(cfg));
                }
                Err(errs) => {
                    let first = errs.0.first().map(|e| e.to_string()).unwrap_or_default();
                    for e in errs.0 {
                        error!("invalid config, service not loaded: {e}");
                    }
                    scan.rejected.insert(name, first);
                }
            }
        }
        scan
    }

    /// Held while the services are replaced and re-exported, so two reloads
    /// never interleave their exports.
    pub async fn reload_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload.lock().await
    }

    /// The services loaded now.
    pub fn services(&self) -> BTreeMap<String, Arc<ServiceConfig>> {
        self.services.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Put `new` in place, with the services kept on their last good
    /// config; returns what was in place.
    pub fn swap_services(
        &self,
        new: BTreeMap<String, Arc<ServiceConfig>>,
        kept: HashMap<String, Kept>,
    ) -> Result<BTreeMap<String, Arc<ServiceConfig>>> {
        let mut services = self
            .services
            .write()
            .map_err(|_| HelperError::failed("registry lock poisoned"))?;
        // A config that changed or went makes what was cached of it stale.
        for name in services.keys() {
            self.status_cache.forget(name);
        }
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        Ok(std::mem::replace(&mut *services, new))
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
