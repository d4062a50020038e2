//! Authorization and audit: every mutating method goes through
//! [`privileged`], so none can forget to ask polkit or to leave a log line.
//!
//! polkit is asked about the caller's system bus name (never a pid, which
//! could be recycled), with the details `service`, `rid` and `node` so that a
//! rule can grant one group one service. Root callers pass without asking.
//! The check runs before the per-service lock is taken: a caller waiting at a
//! password prompt must not stall the others.

use std::collections::HashMap;
use std::future::Future;

use tracing::{info, warn};
use zbus::message::{Flags, Header};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::error::{HelperError, Result};
use crate::registry::Registry;

/// Who called, as far as the bus can tell.
pub struct Caller {
    pub uid: u32,
    pub sender: String,
}

pub async fn caller(conn: &zbus::Connection, header: &Header<'_>) -> Result<Caller> {
    let sender = header
        .sender()
        .ok_or_else(|| HelperError::NotAuthorized("the call has no sender".into()))?
        .to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| HelperError::NotAuthorized(format!("cannot identify the caller: {e}")))?;
    Ok(Caller {
        uid,
        sender: sender.to_string(),
    })
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
        Err(HelperError::NotAuthorized(format!(
            "uid {} is not authorized for {action} on service '{service}' ({rid}) on {node}; \
             a polkit rule must grant it, e.g. membership in group ferry-operators or ferry-svc-{service}",
            caller.uid
        )))
    }
}

/// Authorize, serialize per service, run, and audit-log the whole exchange.
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
    let who = match caller(conn, header).await {
        Ok(c) => c,
        Err(e) => {
            warn!(target: "audit", uid = "?", action, service, rid, result = "denied", "{}", e.message());
            return Err(e);
        }
    };
    if let Err(e) = authorize(
        reg.authority(),
        header,
        &who,
        action,
        service,
        rid,
        reg.node(),
    )
    .await
    {
        warn!(target: "audit", uid = who.uid, sender = %who.sender, action, service, rid, result = "denied", "{}", e.message());
        return Err(e);
    }
    let _guard = reg.lock_service(service).await;
    let outcome = body().await;
    match &outcome {
        Ok(_) => {
            info!(target: "audit", uid = who.uid, sender = %who.sender, action, service, rid, result = "ok")
        }
        Err(e) => {
            warn!(target: "audit", uid = who.uid, sender = %who.sender, action, service, rid, result = "failed", error = e.kind(), "{}", e.message())
        }
    }
    outcome
}
