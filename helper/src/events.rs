//! What a live client (the Cockpit page, a `busctl monitor`) needs so that
//! it never has to poll: a `Step` signal after every privileged call on a
//! service, a `State` property whose PropertiesChanged follows the
//! service's state, and the service's recent audit records, kept in a
//! bounded ring fed by the `audit` tracing target.
//!
//! Everything here is best effort: a signal that cannot be sent must never
//! fail or slow down the action it reports on.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::dbus::service_path;
use ferry_core::status::State;
use tracing::field::{Field, Visit};
use tracing::{debug, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use zbus::object_server::SignalEmitter;

use crate::registry::Registry;
use crate::service::ServiceObject;

/// Audit records kept in memory, over all services: each is at most a few
/// KiB (audit.rs bounds every field), so the ring stays under a few MiB.
const RING_MAX: usize = 1000;
/// The most records one AuditLog call returns.
pub const AUDIT_LOG_MAX: usize = 200;
/// Steps of one action come in bursts (ferry start is ~10 calls in a
/// second): the state is recomputed once the burst pauses this long.
const STATE_SETTLE: Duration = Duration::from_millis(100);
/// How often a waiting State update asks whether the lock holder is gone,
/// and for how long at most (ferry's longest actions take seconds).
const HOLDER_POLL: Duration = Duration::from_millis(50);
const HOLDER_WAIT_MAX: Duration = Duration::from_secs(600);

struct AuditLine {
    /// The record's `service` field as written: quoted and escaped.
    service: String,
    line: String,
}

fn ring() -> &'static Mutex<VecDeque<AuditLine>> {
    static RING: OnceLock<Mutex<VecDeque<AuditLine>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(RING_MAX)))
}

/// The last `max` audit records about `service`, oldest first.
pub fn audit_lines(service: &str, max: usize) -> Vec<String> {
    let want = format!("\"{}\"", crate::audit::clean(service));
    let ring = match ring().lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    let mut out: Vec<String> = ring
        .iter()
        .rev()
        .filter(|a| a.service == want)
        .take(max)
        .map(|a| a.line.clone())
        .collect();
    out.reverse();
    out
}

/// A tracing layer that copies every `audit` record into the ring, in the
/// same `key=value` shape as the log line.
pub struct AuditRing;

#[derive(Default)]
struct Fields {
    service: String,
    message: String,
    kv: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            name => {
                let v = format!("{value:?}");
                if name == "service" {
                    self.service = v.clone();
                }
                let _ = write!(self.kv, "{name}={v} ");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // `result` and `error` are plain &'static str: written bare, as
        // the fmt subscriber writes them.
        let _ = write!(self.kv, "{}={value} ", field.name());
    }
}

impl<S: Subscriber> Layer<S> for AuditRing {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "audit" {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let line = format!(
            "{} {} {}{}",
            utc_now(),
            event.metadata().level(),
            f.kv,
            f.message
        );
        let mut ring = match ring().lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if ring.len() == RING_MAX {
            ring.pop_front();
        }
        ring.push_back(AuditLine {
            service: f.service,
            line: line.trim_end().to_string(),
        });
    }
}

/// `2026-12-01T21:55:01.123Z`, without a date crate.
fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The service's state as `ferry status` sums it up for this node (avail).
pub async fn service_state(reg: &Registry, service: &str) -> String {
    match crate::service::resource_statuses(reg, service).await {
        Ok(s) => State::merge_all(s.iter().map(|r| r.state_here()))
            .as_str()
            .to_string(),
        Err(_) => State::NotApplicable.as_str().to_string(),
    }
}

/// The last State each service's PropertiesChanged announced, and a
/// generation per service so that only the last step of a burst recomputes.
#[derive(Default)]
struct Known {
    state: HashMap<String, String>,
    generation: HashMap<String, u64>,
}

fn known() -> &'static Mutex<Known> {
    static KNOWN: OnceLock<Mutex<Known>> = OnceLock::new();
    KNOWN.get_or_init(Mutex::default)
}

fn lock_known() -> std::sync::MutexGuard<'static, Known> {
    match known().lock() {
        Ok(k) => k,
        Err(p) => p.into_inner(),
    }
}

/// The State property's value: the last one computed, else computed now.
pub async fn cached_state(reg: &Registry, service: &str) -> String {
    if let Some(s) = lock_known().state.get(service) {
        return s.clone();
    }
    let s = service_state(reg, service).await;
    lock_known().state.insert(service.to_string(), s.clone());
    s
}

/// Called once a privileged call on `service` has run (allowed; done or
/// failed): emit `Step` at once, then recompute the service's state once
/// the burst settles and emit PropertiesChanged if it moved. While a
/// caller holds the service's lock (ferry does, for a whole start, stop or
/// relocation) the state waits until the holder lets go (Unlock, or its
/// connection leaves the bus): computing it runs vgs and docker, which
/// would only slow the action down.
pub async fn step_done(
    conn: &zbus::Connection,
    service: &str,
    rid: &str,
    action: &str,
    error: Option<&crate::error::HelperError>,
    elapsed: Duration,
) {
    let path = service_path(service);
    let (result, message) = match error {
        None => ("ok", String::new()),
        Some(e) => ("failed", e.message()),
    };
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match SignalEmitter::new(conn, path.as_str()) {
        Ok(em) => {
            if let Err(e) = ServiceObject::step(&em, rid, action, result, &message, ms).await {
                debug!(service, "Step signal not sent: {e}");
            }
        }
        Err(e) => debug!(service, "Step signal not sent: {e}"),
    }
    settle_then_announce(conn, service, true);
}

/// The service's caller lock was released: its action is over.
pub fn unlocked(conn: &zbus::Connection, service: &str) {
    settle_then_announce(conn, service, false);
}

fn settle_then_announce(conn: &zbus::Connection, service: &str, unless_locked: bool) {
    let generation = {
        let mut k = lock_known();
        let g = k.generation.entry(service.to_string()).or_insert(0);
        *g += 1;
        *g
    };
    let (conn, service) = (conn.clone(), service.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(STATE_SETTLE).await;
        if lock_known().generation.get(&service) != Some(&generation) {
            return; // a later step will do it
        }
        announce_state(&conn, &service, unless_locked).await;
    });
}

/// Recompute the service's state; if it moved, PropertiesChanged for
/// `State` (the getter reads the cache filled here).
async fn announce_state(conn: &zbus::Connection, service: &str, unless_locked: bool) {
    let path = service_path(service);
    let iface = match conn
        .object_server()
        .interface::<_, ServiceObject>(path.as_str())
        .await
    {
        Ok(i) => i,
        Err(_) => return, // not exported (InstallConfig of a new one, reload)
    };
    let reg: Arc<Registry> = iface.get().await.reg.clone();
    if unless_locked {
        if let Some(h) = reg.holds().holder(service) {
            let generation = lock_known().generation.get(service).copied();
            wait_gone(conn, &h.sender).await;
            if lock_known().generation.get(service).copied() != generation {
                return; // steps came meanwhile: the last one's task does it
            }
        }
    }
    let now = service_state(&reg, service).await;
    let changed = lock_known().state.insert(service.to_string(), now.clone()) != Some(now);
    if !changed {
        return;
    }
    let obj = iface.get().await;
    if let Err(e) = obj.state_changed(iface.signal_emitter()).await {
        debug!(service, "State change not announced: {e}");
    }
}

/// Until `name` has left the bus (a lock holder is a ferry process: it
/// exits when its action is done), at most [`HOLDER_WAIT_MAX`].
async fn wait_gone(conn: &zbus::Connection, name: &str) {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return;
    };
    let Ok(bus_name) = zbus::names::BusName::try_from(name) else {
        return;
    };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < HOLDER_WAIT_MAX {
        match dbus.name_has_owner(bus_name.clone()).await {
            Ok(true) => tokio::time::sleep(HOLDER_POLL).await,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn the_ring_keeps_each_services_audit_records() {
        let sub = tracing_subscriber::registry().with(AuditRing);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "audit", uid = %2103, action = %"\"io.ferry.fs.mount\"",
                service = %"\"ringtest\"", result = "denied", "\"not authorized\"");
            tracing::info!(target: "audit", service = %"\"other\"", result = "ok", "");
            tracing::info!(target: "not-audit", service = %"\"ringtest\"", "x");
        });
        let lines = audit_lines("ringtest", 10);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("WARN uid=2103 action=\"io.ferry.fs.mount\""));
        assert!(lines[0].contains("result=denied"));
        assert!(lines[0].ends_with("\"not authorized\""), "{}", lines[0]);
    }

    #[test]
    fn utc_dates() {
        let s = utc_now();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}
