//! Authorization and audit: every mutating method goes through
//! [`privileged`], so none can forget to ask polkit, to respect the service
//! lock, or to leave an audit record.
//!
//! polkit is asked about the caller's system bus name (never a pid, which
//! could be recycled), with the details `service`, `rid` and `node` so that a
//! rule can grant one group one service. Root callers pass without asking.
//! The check runs before the per-service mutex is taken: a caller waiting at
//! a password prompt must not stall the others.

use std::collections::HashMap;
use std::future::Future;

use ferry_core::config;
use zbus::message::{Flags, Header};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::audit::{Outcome, Record};
use crate::error::{HelperError, Result};
use crate::registry::Registry;

/// Who called, as far as the bus can tell.
pub struct Caller {
    pub uid: u32,
    pub sender: String,
    /// From the bus daemon's credentials of the connection, when it has them.
    pub pid: Option<u32>,
    /// For uid-0 callers only: `SUDO_UID` / `SUDO_USER` from the caller's
    /// environment, so that the audit names the operator behind `sudo ferry`.
    /// Root could set these to anything; root is trusted anyway, and this is
    /// a record of who asked, not a permission.
    pub sudo_uid: Option<String>,
    pub sudo_user: Option<String>,
}

/// `SUDO_UID` and `SUDO_USER` from /proc/PID/environ (root may read it).
fn sudo_vars(pid: u32) -> (Option<String>, Option<String>) {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return (None, None);
    };
    let mut uid = None;
    let mut user = None;
    for var in env.split(|b| *b == 0) {
        if let Some(v) = var.strip_prefix(b"SUDO_UID=") {
            uid = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = var.strip_prefix(b"SUDO_USER=") {
            user = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    (uid, user)
}

pub async fn caller(conn: &zbus::Connection, header: &Header<'_>) -> Result<Caller> {
    let sender = header
        .sender()
        .ok_or_else(|| HelperError::NotAuthorized("the call has no sender".into()))?
        .to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    // One round trip for uid and pid.
    let creds = dbus
        .get_connection_credentials(sender.clone().into())
        .await
        .map_err(|e| HelperError::NotAuthorized(format!("cannot identify the caller: {e}")))?;
    let uid = creds.unix_user_id().ok_or_else(|| {
        HelperError::NotAuthorized("the bus does not know the caller's uid".into())
    })?;
    let pid = creds.process_id();
    let (sudo_uid, sudo_user) = match (uid, pid) {
        (0, Some(p)) => sudo_vars(p),
        _ => (None, None),
    };
    Ok(Caller {
        uid,
        sender: sender.to_string(),
        pid,
        sudo_uid,
        sudo_user,
    })
}

/// A service name from a caller must be one the helper could have loaded:
/// anything else (a path, a newline, 120 KiB) is refused before polkit is
/// asked or anything is logged at length.
pub fn check_service_name(service: &str) -> Result<()> {
    if config::valid_service_name(service) {
        Ok(())
    } else {
        // Bounded for the reply; the audit escapes it when it logs the error.
        let shown: String = service.chars().take(80).collect();
        let more = if shown.len() < service.len() {
            format!("…({} bytes)", service.len())
        } else {
            String::new()
        };
        Err(HelperError::InvalidArgument(format!(
            "'{shown}{more}' is not a valid service name (letters, digits, '.', '-', '_'; at most 64)"
        )))
    }
}

/// Ask polkit whether the caller may run `action` on `service`/`rid`.
pub async fn authorize(
    authority: &AuthorityProxy<'static>,
    header: &Header<'_>,
    caller: &Caller,
    action: &str,
    service: &str,
    rid: &str,
    node: &str,
) -> Result<()> {
    if caller.uid == 0 {
        return Ok(());
    }
    let subject = Subject::new_for_message_header(header)
        .map_err(|e| HelperError::NotAuthorized(format!("cannot identify the caller: {e}")))?;
    let details: HashMap<&str, &str> =
        HashMap::from([("service", service), ("rid", rid), ("node", node)]);
    // Honour the caller's allow-interactive-auth flag: a prompt only when asked for.
    let flags = if header
        .primary()
        .flags()
        .contains(Flags::ALLOW_INTERACTIVE_AUTH)
    {
        CheckAuthorizationFlags::ALLOW_USER_INTERACTION
    } else {
        CheckAuthorizationFlags::empty()
    };
    let result = authority
        .check_authorization(&subject, action, &details, flags, "")
        .await
        .map_err(|e| {
            HelperError::NotAuthorized(format!("polkit did not answer for {action}: {e}"))
        })?;
    if result.is_authorized {
        Ok(())
    } else {
        // Service-wide actions (lock, config install) have no rid; node-wide
        // ones (reload) no service either.
        if service.is_empty() {
            return Err(HelperError::NotAuthorized(format!(
                "uid {} is not authorized for {action} on {node}; a polkit rule must grant it, \
                 e.g. membership in group ferry-operators",
                caller.uid
            )));
        }
        let rid = if rid.is_empty() {
            String::new()
        } else {
            format!(" ({rid})")
        };
        Err(HelperError::NotAuthorized(format!(
            "uid {} is not authorized for {action} on service '{service}'{rid} on {node}; \
             a polkit rule must grant it, e.g. membership in group ferry-operators or ferry-svc-{service}",
            caller.uid
        )))
    }
}

/// Identify the caller, check the service name, and authorize; every
/// refusal is audited once. Used by every privileged method, including
/// those that do not run under the per-service mutex (Lock, docker).
pub async fn identify_and_authorize(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    action: &str,
    service: &str,
    rid: &str,
) -> Result<Caller> {
    let who = match caller(conn, header).await {
        Ok(c) => c,
        Err(e) => {
            Record::new(None, action, service, rid, Outcome::Denied)
                .error(&e)
                .log();
            return Err(e);
        }
    };
    let checked = match check_service_name(service) {
        Ok(()) => {
            authorize(
                reg.authority(),
                header,
                &who,
                action,
                service,
                rid,
                reg.node(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        Record::new(Some(&who), action, service, rid, Outcome::Denied)
            .error(&e)
            .log();
        return Err(e);
    }
    Ok(who)
}

/// [`identify_and_authorize`] for an action on the node, not on one
/// service (Manager.Reload): no service name to check, none passed to polkit.
pub async fn identify_and_authorize_node(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    action: &str,
) -> Result<Caller> {
    let who = match caller(conn, header).await {
        Ok(c) => c,
        Err(e) => {
            Record::new(None, action, "", "", Outcome::Denied)
                .error(&e)
                .log();
            return Err(e);
        }
    };
    if let Err(e) = authorize(reg.authority(), header, &who, action, "", "", reg.node()).await {
        Record::new(Some(&who), action, "", "", Outcome::Denied)
            .error(&e)
            .log();
        return Err(e);
    }
    Ok(who)
}

/// Authorize, respect the service lock, serialize per service, run, and
/// audit the whole exchange.
pub async fn privileged<T, F, Fut>(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    action: &str,
    service: &str,
    rid: &str,
    body: F,
) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let who = identify_and_authorize(reg, conn, header, action, service, rid).await?;
    let _guard = reg.lock_service(service).await;
    // Checked under the mutex: a Lock taken while this call waited for the
    // mutex still counts.
    if let Err(e) = crate::lock::check_free_for(reg.holds(), conn, service, reg.node(), &who).await
    {
        Record::new(Some(&who), action, service, rid, Outcome::Denied)
            .error(&e)
            .log();
        return Err(e);
    }
    // The lock's holder is busy while its call runs: its lock is not broken
    // halfway through (see crate::lock).
    let active = reg.holds().activity(service, &who.sender);
    let t0 = std::time::Instant::now();
    let outcome = body().await;
    drop(active);
    // What the call changed shows at once, in everyone's next status.
    reg.status_cache().invalidate(service);
    // Cockpit and other live clients follow each step (events.rs).
    let err = outcome.as_ref().err();
    crate::events::step_done(conn, service, rid, action, err, t0.elapsed()).await;
    match &outcome {
        Ok(_) => Record::new(Some(&who), action, service, rid, Outcome::Ok).log(),
        Err(e) => Record::new(Some(&who), action, service, rid, Outcome::Failed)
            .error(e)
            .log(),
    }
    outcome
}
