//! What every resource object carries, and the one way its mutating methods
//! run: behind polkit, the service lock and the audit (`auth::privileged`).

use std::sync::Arc;

use ferry_core::config::{KindConfig, Resource, ServiceConfig};

use crate::error::{HelperError, Result};
use crate::registry::Registry;

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

impl ResCtx {
    /// This resource's line of the service's status, as `Check` answers:
    /// as of now, from cheap checks (crate::status_cache).
    pub async fn check(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
    ) -> Result<ferry_core::status::ResourceStatus> {
        crate::status_cache::check_for(&self.reg, conn, header, &self.service, &self.rid).await
    }

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
        // The order guard runs inside the lock, right before the action:
        // what it checked cannot change in between.
        crate::auth::privileged(
            &self.reg,
            conn,
            header,
            action,
            &self.service,
            &self.rid,
            || async {
                crate::guard::check(self, action).await?;
                body().await
            },
        )
        .await
    }
}
