//! The connection to this node's helper, and proxies for its objects.

use ferry_core::config::{self, Kind, ServiceConfig};
use ferry_core::dbus::{
    resource_path, service_path, ContainerProxy, FsProxy, IpProxy, LeaseProxy, ManagerProxy,
    ServiceProxy, VgProxy,
};
use zbus::proxy::CacheProperties;
use zbus::Connection;

use crate::error::{FerryError, Result};

pub struct Helper {
    pub conn: Connection,
}

impl Helper {
    pub async fn connect() -> Result<Helper> {
        let conn = Connection::system().await.map_err(|e| {
            FerryError::HelperDown(format!(
                "cannot connect to the system bus: {e} (is dbus running?)"
            ))
        })?;
        Ok(Helper { conn })
    }

    pub async fn manager(&self) -> Result<ManagerProxy<'_>> {
        // No property cache: ferry reads NodeName once per process, and a
        // cache costs a match rule and a GetAll round trip for every proxy.
        Ok(ManagerProxy::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    pub async fn services(&self) -> Result<Vec<String>> {
        Ok(self.manager().await?.list_services().await?)
    }

    pub async fn node_name(&self) -> Result<String> {
        Ok(self.manager().await?.node_name().await?)
    }

    pub async fn service(&self, name: &str) -> Result<ServiceProxy<'_>> {
        Ok(ServiceProxy::builder(&self.conn)
            .path(service_path(name))
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    /// The service's config as the helper runs it. An unknown service gets
    /// the local file's own validation errors when there is a file.
    pub async fn config(&self, name: &str) -> Result<ServiceConfig> {
        // Checked before the name becomes part of a path: under sudo this
        // process is root, and `../x` must not read files elsewhere.
        if !config::valid_service_name(name) {
            return Err(FerryError::Usage(format!(
                "'{name}' is not a valid service name (letters, digits, '.', '-', '_')"
            )));
        }
        let known = self.services().await?;
        if !known.iter().any(|s| s == name) {
            let path = config::services_dir().join(format!("{name}.conf"));
            if path.exists() {
                config::load_service(&path).map_err(FerryError::Config)?;
                return Err(FerryError::Failed(format!(
                    "{} is valid but the helper has not loaded it: run `ferry reload`; \
                     the helper loads only root-owned files nobody else may write (its log says why)",
                    path.display()
                )));
            }
            return Err(FerryError::Usage(format!(
                "unknown service '{name}' on this node (services here: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let (text, _sum) = self.service(name).await?.config().await?;
        let file = config::services_dir().join(format!("{name}.conf"));
        config::parse_service(&file.display().to_string(), &text).map_err(FerryError::Config)
    }

    pub async fn ip(&self, svc: &str, rid: &str) -> Result<IpProxy<'_>> {
        Ok(IpProxy::builder(&self.conn)
            .path(resource_path(svc, rid))
            .build()
            .await?)
    }
    pub async fn lease(&self, svc: &str, rid: &str) -> Result<LeaseProxy<'_>> {
        Ok(LeaseProxy::builder(&self.conn)
            .path(resource_path(svc, rid))
            .build()
            .await?)
    }
    pub async fn vg(&self, svc: &str, rid: &str) -> Result<VgProxy<'_>> {
        Ok(VgProxy::builder(&self.conn)
            .path(resource_path(svc, rid))
            .build()
            .await?)
    }
    pub async fn fs(&self, svc: &str, rid: &str) -> Result<FsProxy<'_>> {
        Ok(FsProxy::builder(&self.conn)
            .path(resource_path(svc, rid))
            .build()
            .await?)
    }
    pub async fn container(&self, svc: &str, rid: &str) -> Result<ContainerProxy<'_>> {
        Ok(ContainerProxy::builder(&self.conn)
            .path(resource_path(svc, rid))
            .build()
            .await?)
    }

    /// The first container resource of a service.
    pub fn first_container(cfg: &ServiceConfig) -> Result<String> {
        cfg.resources
            .iter()
            .find(|r| r.kind() == Kind::Container)
            .map(|r| r.rid.clone())
            .ok_or_else(|| {
                FerryError::Usage(format!("service '{}' has no container resource", cfg.name))
            })
    }
}
