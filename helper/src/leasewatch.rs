//! Losing the lease lets go of the storage.
//!
//! A lease guards the disks only while the holder acts on losing it. Losing
//! it means: the sanlock daemon died or restarted, the lockspace was
//! removed (`sanlock client rem_lockspace`), or its renewals fail (the
//! lease disk stopped answering, the area was overwritten). Another node
//! may take the lease 8 x io_timeout + 60 s after this node's last renewal;
//! by then this node must have stopped the service's containers and
//! daemon, unmounted its filesystems and untagged its VG.
//!
//! Why the helper watches itself rather than trusting a killpath alone:
//! - when the daemon dies (kill -9, a crash) nothing runs a killpath, and
//!   sanlock sends no signal: only the registration socket closing says so;
//! - on `rem_lockspace` sanlock skips the killpath and SIGKILLs at once;
//! - a killpath runs once per loss, as a separate program that must itself
//!   be a trusted root binary, and it cannot name the failed lockspace.
//!
//! So, every `TICK` (well under io_timeout), for each lease held here:
//! - the registration socket still open (`Registration::connection_closed`);
//! - the lockspace not declared dead by the daemon (`lockspace_failed`);
//! - this host's own delta-lease timestamp still moving (renewals every
//!   2 x io_timeout): stuck for `STALE_RENEWALS` x io_timeout means the
//!   renewals fail, which sanlock itself acts on only at 8 x io_timeout.
//!
//! And sanlock's own signal is kept, made harmless: the registration
//! restricts SIGKILL, so where sanlock would kill the helper it sends
//! SIGTERM, which main.rs hands to [`on_sigterm`]: check now, and keep
//! running while a lease is being let go.
//!
//! After a connection loss the helper registers with the new daemon and
//! rejoins; if that and re-taking the lease finish within
//! `READOPT_IO_TIMEOUTS` x io_timeout it keeps the storage (the disk said
//! the lease is still this host's), else it lets go. It never goes on
//! holding the storage on the strength of the dead connection.
//!
//! Without a watchdog nothing forces a hung node to stop: see the README.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_core::config::{ResourceConfig, ServiceConfig};
use tracing::{error, info, warn};

use crate::audit::{Outcome, Record};
use crate::ctx::ResCtx;
use crate::lease::{self, Loss};
use crate::registry::Registry;
use crate::sanlock;

/// How often held leases are checked (io_timeout is at least 1 s).
const TICK: Duration = Duration::from_millis(250);
/// Own timestamp unchanged this many io_timeouts: renewals are failing
/// (they happen every 2 x io_timeout; two missed ones and a margin).
const STALE_RENEWALS: u32 = 5;
/// A reconnect + rejoin + re-acquire must be done within this many
/// io_timeouts, or the storage is let go (leaves 3 x io_timeout for it
/// before sanlock's own 8 x io_timeout).
const READOPT_IO_TIMEOUTS: u32 = 4;
/// The audit action for a loss and what was done about it.
const ACTION: &str = "io.ferry.lease.lost";
/// sanlock goes on sending SIGTERM (once a second, up to 100 times) until
/// the failed lockspace's leases are released: within this long after a
/// loss, a SIGTERM is taken as one of those.
const LOSS_SIGTERM_WINDOW: Duration = Duration::from_secs(120);

static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();

struct Watch {
    /// Lockspace -> (last own timestamp seen, when it last moved).
    stamps: BTreeMap<String, (u64, Instant)>,
    /// Services whose loss is being handled now.
    handling: BTreeSet<String>,
    last_loss: Option<Instant>,
}

static WATCH: Mutex<Watch> = Mutex::new(Watch {
    stamps: BTreeMap::new(),
    handling: BTreeSet::new(),
    last_loss: None,
});

fn watch() -> std::sync::MutexGuard<'static, Watch> {
    WATCH.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the watch once (from the first service with a lease).
pub fn ensure_started(reg: &Arc<Registry>) {
    if REGISTRY.set(reg.clone()).is_err() {
        return;
    }
    let reg = reg.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            check(&reg).await;
        }
    });
}

/// What main.rs calls on SIGTERM: true when it came from sanlock (a lease
/// is lost or being let go): the helper then keeps running to finish that.
pub async fn on_sigterm() -> bool {
    let Some(reg) = REGISTRY.get() else {
        return false;
    };
    let found = check(reg).await;
    let w = watch();
    found
        || !w.handling.is_empty()
        || w.last_loss
            .is_some_and(|t| t.elapsed() < LOSS_SIGTERM_WINDOW)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The daemon closed the registration: try to re-adopt, else let go.
    ConnectionLost,
    /// The lockspace is dead, gone, or its renewals fail: let go.
    LockspaceFailed,
}

/// One round over the held leases; starts handling each lost one. True
/// when some lease was found lost.
async fn check(reg: &Arc<Registry>) -> bool {
    let held = lease::held_leases();
    if held.is_empty() {
        return false;
    }
    let host_id = reg.node_conf().host_id.unwrap_or(0);
    let closed = match lease::current_registration() {
        Some((_, r)) => {
            let r2 = r.clone();
            tokio::task::spawn_blocking(move || r2.connection_closed())
                .await
                .unwrap_or(true)
        }
        None => true,
    };
    if closed {
        lease::forget_registration();
    }
    let current = lease::current_registration().map(|(id, _)| id);
    let mut lost = Vec::new();
    for (ls, h) in held {
        if watch().handling.contains(&h.service) {
            continue;
        }
        if closed || Some(h.registration) != current {
            lost.push((
                h.service,
                Why::ConnectionLost,
                "the sanlock daemon closed the helper's registration (it died or restarted)"
                    .to_string(),
            ));
            continue;
        }
        let ls2 = ls.clone();
        let probe = tokio::task::spawn_blocking(move || {
            (
                sanlock::lockspace_failed(&ls2),
                sanlock::own_timestamp(&ls2, host_id),
            )
        })
        .await;
        let Ok((failed, stamp)) = probe else {
            continue;
        };
        match failed {
            Ok(Some(why)) => {
                lost.push((h.service, Why::LockspaceFailed, why.to_string()));
                continue;
            }
            Ok(None) => {}
            Err(e) if e.is_connection_lost() || e.code == -libc::ECONNREFUSED => {
                lost.push((
                    h.service,
                    Why::ConnectionLost,
                    format!("the sanlock daemon does not answer: {e}"),
                ));
                continue;
            }
            Err(e) => warn!(lockspace = %ls, "lease watch: {e}"),
        }
        if let Ok(Some(ts)) = stamp {
            let limit = Duration::from_secs(u64::from(STALE_RENEWALS * h.io_timeout));
            let mut w = watch();
            let entry = w.stamps.entry(ls.clone()).or_insert((ts, Instant::now()));
            if entry.0 != ts {
                *entry = (ts, Instant::now());
            } else if entry.1.elapsed() > limit {
                let secs = entry.1.elapsed().as_secs();
                drop(w);
                lost.push((
                    h.service,
                    Why::LockspaceFailed,
                    format!(
                        "this host's lease renewals have failed for {secs} s (the lease disk does \
                         not answer, or the area was overwritten)"
                    ),
                ));
            }
        }
    }
    let found = !lost.is_empty();
    for (service, why, text) in lost {
        {
            let mut w = watch();
            if !w.handling.insert(service.clone()) {
                continue;
            }
            w.last_loss = Some(Instant::now());
        }
        error!(service = %service, "lease lost: {text}");
        let reg = reg.clone();
        tokio::spawn(async move {
            handle_loss(&reg, &service, why, &text).await;
            let mut w = watch();
            w.handling.remove(&service);
            w.stamps
                .remove(&ferry_core::config::LeaseConfig::lockspace(&service));
            w.last_loss = Some(Instant::now());
        });
    }
    found
}

async fn handle_loss(reg: &Arc<Registry>, service: &str, why: Why, text: &str) {
    let t0 = Instant::now();
    let rid = lease::held_leases()
        .into_iter()
        .find(|(_, h)| h.service == service)
        .map(|(_, h)| h.rid)
        .unwrap_or_else(|| "lease".into());
    if why == Why::ConnectionLost {
        let io = lease::held_leases()
            .into_iter()
            .find(|(_, h)| h.service == service)
            .map_or(10, |(_, h)| h.io_timeout);
        let budget = Duration::from_secs(u64::from(READOPT_IO_TIMEOUTS * io));
        match readopt(reg, service, budget).await {
            Ok(log) => {
                let note = format!(
                    "{text}; re-adopted in {} ms: {}",
                    t0.elapsed().as_millis(),
                    log.join("; ")
                );
                info!(service = %service, "lease re-adopted after the daemon connection was lost");
                Record::new(None, ACTION, service, &rid, Outcome::Ok)
                    .note(&note)
                    .log();
                lease::set_loss(
                    service,
                    Loss::Handled(format!("lease re-adopted after: {text}")),
                );
                return;
            }
            Err(e) => {
                warn!(service = %service, "cannot re-adopt the lease ({e}): letting go of the storage")
            }
        }
    }
    let (log, failures) = let_go(reg, service).await;
    let ms = t0.elapsed().as_millis();
    if failures.is_empty() {
        let note = format!("{text}; let go in {ms} ms: {}", log.join("; "));
        info!(service = %service, ms = ms as u64, "storage let go after the lease was lost");
        Record::new(None, ACTION, service, &rid, Outcome::Ok)
            .note(&note)
            .log();
        lease::set_loss(
            service,
            Loss::Handled(format!(
                "lease lost ({text}): the storage was let go in {ms} ms"
            )),
        );
    } else {
        let what = failures.join("; ");
        let note = format!(
            "{text}; NOT let go after {ms} ms: {what}; done: {}",
            log.join("; ")
        );
        error!(service = %service, "the lease was lost but the storage is not let go: {what}");
        let e = crate::error::HelperError::failed(what.clone());
        Record::new(None, ACTION, service, &rid, Outcome::Failed)
            .error(&e)
            .note(&note)
            .log();
        lease::set_loss(
            service,
            Loss::NotLetGo(format!(
                "lease lost ({text}) but the storage could not be let go: {what}"
            )),
        );
    }
}

/// Reconnect, rejoin and re-take the lease within `budget`.
async fn readopt(reg: &Registry, service: &str, budget: Duration) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + budget;
    loop {
        match tokio::time::timeout_at(deadline.into(), lease::rejoin(reg, service)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) if Instant::now() + Duration::from_millis(500) < deadline => {
                // The new daemon may not listen yet.
                tracing::debug!(service, "rejoin: {}", e.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(e)) => return Err(e.message()),
            Err(_) => return Err(format!("not rejoined within {} s", budget.as_secs())),
        }
    }
    if Instant::now() >= deadline {
        return Err("rejoined too late".into());
    }
    lease::reacquire(reg, service)
        .await
        .map_err(|e| e.message())
}

/// Stop what uses the service's storage on this node, the way a stop
/// would, with the same drivers: containers, the private daemon, the
/// filesystems (deepest first), the volume group; then the lease and the
/// address. Best effort: every step is tried, and what failed is returned.
async fn let_go(reg: &Arc<Registry>, service: &str) -> (Vec<String>, Vec<String>) {
    let mut log = Vec::new();
    let mut failures = Vec::new();
    let svc: Arc<ServiceConfig> = match reg.service(service) {
        Ok(s) => s,
        Err(e) => return (log, vec![e.message()]),
    };
    // Bounded: the whole let-go must end well within 8 x io_timeout.
    let container_budget = Duration::from_secs(3);
    for r in svc.resources.iter().rev() {
        if let ResourceConfig::Container(c) = &r.config {
            let stopped =
                tokio::time::timeout(container_budget, crate::container::stop(&svc, &r.rid, c))
                    .await
                    .unwrap_or_else(|_| {
                        // The unmount below kills what still uses the filesystem.
                        Ok(vec![format!(
                            "{}: stop timed out; its processes are killed at the unmount",
                            r.rid
                        )])
                    });
            step(&mut log, &mut failures, stopped, &r.rid);
        }
    }
    if svc.docker_data_dir.is_some() {
        step(
            &mut log,
            &mut failures,
            crate::container::daemon::stop(&svc).await,
            "docker daemon",
        );
    }
    for r in svc.resources.iter().rev() {
        match &r.config {
            ResourceConfig::Fs(c) => step(
                &mut log,
                &mut failures,
                crate::fs::unmount(&svc.name, &r.rid, c).await,
                &r.rid,
            ),
            ResourceConfig::Vg(c) => {
                step(
                    &mut log,
                    &mut failures,
                    crate::vg::activate(c, false).await,
                    &r.rid,
                );
                step(
                    &mut log,
                    &mut failures,
                    crate::vg::untag(reg.node(), c).await,
                    &r.rid,
                );
            }
            _ => {}
        }
    }
    // The lease goes back only once the storage is let go; while it is
    // not, keeping it (or its orphan) keeps the disk saying so.
    if failures.is_empty() {
        step(
            &mut log,
            &mut failures,
            lease::release_after_loss(reg, service)
                .await
                .or_else(|e| Ok(vec![format!("lease: {}", e.message())])),
            "lease",
        );
    } else {
        lease::forget_held(&ferry_core::config::LeaseConfig::lockspace(service));
    }
    for r in svc.resources.iter().rev() {
        if let ResourceConfig::Ip(_) = &r.config {
            let ctx = ResCtx {
                reg: reg.clone(),
                service: service.to_string(),
                rid: r.rid.clone(),
            };
            step(
                &mut log,
                &mut failures,
                crate::ip::remove(&ctx).await,
                &r.rid,
            );
        }
    }
    (log, failures)
}

fn step(
    log: &mut Vec<String>,
    failures: &mut Vec<String>,
    r: crate::error::Result<Vec<String>>,
    what: &str,
) {
    match r {
        Ok(l) => log.extend(l),
        Err(e) => failures.push(format!("{what}: {}", e.message())),
    }
}
