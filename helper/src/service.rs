//! `io.ferry.Helper1.Service`: one object per service: its status and
//! config (read-only), and the caller lock held across a whole action.

use std::sync::Arc;

use ferry_core::config::{ResourceConfig, ServiceConfig};
use ferry_core::status::ResourceStatus;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

use crate::audit::{Outcome, Record};
use crate::error::Result;
use crate::registry::Registry;

use ferry_core::dbus::{BREAK_LOCK_ACTION, LOCK_ACTION};

/// Reading a service's audit records (they name callers' uids and pids).
const AUDIT_READ_ACTION: &str = "io.ferry.audit.read";

pub struct ServiceObject {
    pub reg: Arc<Registry>,
    pub service: String,
}

/// Every resource's status, in start order, fresh.
pub async fn resource_statuses(reg: &Registry, service: &str) -> Result<Vec<ResourceStatus>> {
    statuses_of(reg, reg.service(service)?).await
}

/// Every resource's status of this config, in start order, fresh.
pub async fn statuses_of(reg: &Registry, svc: Arc<ServiceConfig>) -> Result<Vec<ResourceStatus>> {
    let mut out = Vec::with_capacity(svc.resources.len());
    for r in &svc.resources {
        out.push(match &r.config {
            ResourceConfig::Ip(c) => crate::ip::status(&r.rid, c).await,
            ResourceConfig::Lease(c) => crate::lease::status(reg, &svc, &r.rid, c).await,
            ResourceConfig::Vg(c) => crate::vg::status(reg.node(), &r.rid, c).await,
            ResourceConfig::Fs(c) => crate::fs::status(&r.rid, c).await,
            ResourceConfig::Container(c) => reg.status_cache().container(&svc, &r.rid, c).await,
        });
    }
    Ok(out)
}

#[interface(name = "io.ferry.Helper1.Service")]
impl ServiceObject {
    /// Every resource's status, in start order: `a(sssas)` = rid, state,
    /// label, comments; as of now, from cheap checks (see
    /// crate::status_cache). A service run with its last good config, its
    /// file now bad, has one more entry: rid `config`.
    async fn status(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<ResourceStatus>> {
        crate::status_cache::statuses_for(&self.reg, conn, &header, &self.service).await
    }

    /// Forget what the helper knows of the service's volume groups and
    /// containers: the next Status asks LVM and dockerd (`ferry status
    /// --refresh`). Read-only, open to any caller; for callers other than
    /// root it counts at most once a second per service (see
    /// crate::status_cache).
    async fn refresh(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let svc = self.reg.service(&self.service)?;
        let root = crate::auth::caller(conn, &header).await?.uid == 0;
        if !crate::status_cache::refresh(&self.reg, &svc, root) {
            tracing::debug!(service = %svc.name, "Refresh within a second of the last one: not repeated");
        }
        Ok(())
    }

    /// The config text as installed on this node, and its sha256.
    async fn config(&self) -> Result<(String, String)> {
        let svc = self.reg.service(&self.service)?;
        Ok((svc.text.clone(), svc.checksum()))
    }

    /// Take the service's lock for the caller's bus name, waiting up to
    /// `wait_ms` for another holder; fails with `Locked` naming the holder.
    /// Taking it again is a no-op. It is free again on Unlock or once the
    /// caller's name has left the bus. While held, other callers' mutating
    /// calls on the service are refused with `Locked`.
    async fn lock(
        &self,
        wait_ms: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (reg, service) = (&self.reg, self.service.as_str());
        let who = crate::auth::identify_and_authorize(reg, conn, &header, LOCK_ACTION, service, "")
            .await?;
        let wait = std::time::Duration::from_millis(u64::from(wait_ms));
        match crate::lock::acquire(reg.holds(), conn, service, reg.node(), &who, wait).await {
            Ok(true) => Record::new(Some(&who), LOCK_ACTION, service, "", Outcome::Ok).log(),
            Ok(false) => Record::new(Some(&who), LOCK_ACTION, service, "", Outcome::Ok)
                .note("already held by this caller")
                .log(),
            Err(e) => {
                Record::new(Some(&who), LOCK_ACTION, service, "", Outcome::Denied)
                    .error(&e)
                    .log();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Take the service's lock like Lock; when another caller still holds
    /// it after `wait_ms` and is idle, break its lock (audited; its next call
    /// fails with `LockBroken`). A holder in the middle of an action keeps
    /// it: `Locked`. For Pacemaker's agent and `ferry stop --break-lock`.
    async fn break_lock(
        &self,
        wait_ms: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (reg, service) = (&self.reg, self.service.as_str());
        let who =
            crate::auth::identify_and_authorize(reg, conn, &header, BREAK_LOCK_ACTION, service, "")
                .await?;
        let wait = std::time::Duration::from_millis(u64::from(wait_ms));
        match crate::lock::acquire_breaking(reg, conn, service, &who, wait).await {
            Ok(crate::lock::Taken::Free) => {
                Record::new(Some(&who), BREAK_LOCK_ACTION, service, "", Outcome::Ok)
                    .note("the lock was free: nothing broken")
                    .log()
            }
            Ok(crate::lock::Taken::AlreadyMine) => {
                Record::new(Some(&who), BREAK_LOCK_ACTION, service, "", Outcome::Ok)
                    .note("already held by this caller")
                    .log()
            }
            Ok(crate::lock::Taken::Broke(h)) => {
                let note = format!("lock broken: it was held by {}", h.describe());
                Record::new(Some(&who), BREAK_LOCK_ACTION, service, "", Outcome::Ok)
                    .note(&note)
                    .log()
            }
            Err(e) => {
                Record::new(Some(&who), BREAK_LOCK_ACTION, service, "", Outcome::Denied)
                    .error(&e)
                    .log();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Release the caller's lock. A free lock: no-op; another caller's
    /// lock: `Locked`. Needs no polkit: only the holder can release it.
    async fn unlock(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        const ACTION: &str = "io.ferry.service.unlock";
        let (reg, service) = (&self.reg, self.service.as_str());
        let who = match crate::auth::caller(conn, &header).await {
            Ok(w) => w,
            Err(e) => {
                Record::new(None, ACTION, service, "", Outcome::Denied)
                    .error(&e)
                    .log();
                return Err(e);
            }
        };
        match crate::lock::release(reg.holds(), service, reg.node(), &who) {
            Ok(held) => {
                crate::events::unlocked(conn, service);
                let r = Record::new(Some(&who), ACTION, service, "", Outcome::Ok);
                if held { r } else { r.note("was not held") }.log();
                Ok(())
            }
            Err(e) => {
                Record::new(Some(&who), ACTION, service, "", Outcome::Denied)
                    .error(&e)
                    .log();
                Err(e)
            }
        }
    }

    /// The service's recent audit records about this node's helper (newest
    /// last, at most 200, kept in memory since the helper started): who
    /// called what, allowed, refused or failed. Needs `io.ferry.audit.read`.
    async fn audit_log(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        crate::auth::identify_and_authorize(
            &self.reg,
            conn,
            &header,
            AUDIT_READ_ACTION,
            &self.service,
            "",
        )
        .await?;
        Ok(crate::events::audit_lines(
            &self.service,
            crate::events::AUDIT_LOG_MAX,
        ))
    }

    /// Sent after every privileged call on the service or one of its
    /// resources that was allowed to run: which resource (empty for the
    /// service itself), the polkit action, `ok` or `failed`, the error
    /// message, and how long it took. A client follows an action step by
    /// step with it, whoever runs the action.
    #[zbus(signal)]
    pub async fn step(
        emitter: &SignalEmitter<'_>,
        rid: &str,
        action: &str,
        result: &str,
        message: &str,
        elapsed_ms: u64,
    ) -> zbus::Result<()>;

    /// The service's state on this node, as `ferry status` sums it up
    /// (`up`, `down`, `warn`, `n/a`). PropertiesChanged follows it after
    /// every action, within ~0.1 s of its last step.
    #[zbus(property)]
    async fn state(&self) -> String {
        crate::events::cached_state(&self.reg, &self.service).await
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
