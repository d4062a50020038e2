//! The service's sanlock disk lease: the shared storage itself says which
//! node may use the service's disks.
//!
//! The helper keeps one registration with the node's sanlock daemon for its
//! whole life and holds every lease through it as a *persistent* lease: the
//! mounts outlive a helper that dies, so its leases must too (they become
//! orphans), and the next helper re-adopts them when it joins the
//! lockspace. Each service's lease area holds its own lockspace (1 MiB) and
//! the resource lease (1 MiB after it).
//!
//! Without a watchdog (none on the lab machines) a node whose sanlock daemon
//! dies keeps its mounts while the lease expires under it; production needs
//! wdmd and a watchdog device (README).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::config::{LeaseConfig, ServiceConfig};
use ferry_core::dbus::CheckResult;
use ferry_core::status::{ResourceStatus, State, LEASE_HELD_ELSEWHERE};
use tracing::{info, warn};
use zbus::message::Header;
use zbus::{interface, Connection};

use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};
use crate::registry::Registry;
use crate::sanlock::{self, AcquireFlags, Disk, HostState, Leader, Registration, SanlockError};

pub struct LeaseObject {
    pub ctx: ResCtx,
}

/// Owned copies of what the blocking sanlock calls need.
#[derive(Clone)]
struct Area {
    lockspace: String,
    dev: String,
    offset: u64,
    resource_offset: u64,
    io_timeout: u32,
}

impl Area {
    fn new(service: &str, c: &LeaseConfig) -> Area {
        Area {
            lockspace: LeaseConfig::lockspace(service),
            dev: c.dev.clone(),
            offset: c.offset,
            resource_offset: c.resource_offset(),
            io_timeout: c.io_timeout,
        }
    }
    fn lockspace_disk(&self) -> Disk<'_> {
        Disk {
            path: &self.dev,
            offset: self.offset,
        }
    }
    fn resource_disk(&self) -> Disk<'_> {
        Disk {
            path: &self.dev,
            offset: self.resource_offset,
        }
    }
    fn label(&self) -> String {
        format!("{}@{}", self.lockspace, self.dev)
    }
}

/// The helper's one registration with the sanlock daemon, numbered: a
/// lease held through registration n is held only while n is current (a
/// daemon restart closes it, and what it held is then nobody's here).
static REGISTRATION: Mutex<Option<(u64, Arc<Registration>)>> = Mutex::new(None);
static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn current_registration() -> Option<(u64, Arc<Registration>)> {
    REGISTRATION
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn registration_with_id() -> std::result::Result<(u64, Arc<Registration>), SanlockError> {
    let mut slot = REGISTRATION.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = slot.as_ref() {
        return Ok(r.clone());
    }
    let r = Arc::new(sanlock::register()?);
    let id = REGISTRATIONS.fetch_add(1, Ordering::Relaxed) + 1;
    *slot = Some((id, r.clone()));
    Ok((id, r))
}

fn registration() -> std::result::Result<Arc<Registration>, SanlockError> {
    registration_with_id().map(|(_, r)| r)
}

/// A connection error means the daemon went away: the next call registers
/// anew (what the old registration held is then an orphan, or gone).
fn forget_registration_on(e: &SanlockError) {
    if e.is_connection_lost() {
        forget_registration();
    }
}

pub(crate) fn forget_registration() {
    *REGISTRATION.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// A lease this helper holds, by lockspace name.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub service: String,
    pub rid: String,
    /// The registration it is held through.
    pub registration: u64,
    pub io_timeout: u32,
}

/// What this helper holds, kept here rather than asked of the daemon: a
/// node-wide `sanlock_inquire` lists every service's leases in one string,
/// and one odd resource in it (a path with a space) made it fail (-81) for
/// every service. Each service's answer now depends on its own lease only.
static HELD: Mutex<BTreeMap<String, Held>> = Mutex::new(BTreeMap::new());

fn held_map() -> std::sync::MutexGuard<'static, BTreeMap<String, Held>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_held(area: &Area, service: &str, rid: &str, registration: u64) {
    held_map().insert(
        area.lockspace.clone(),
        Held {
            service: service.to_string(),
            rid: rid.to_string(),
            registration,
            io_timeout: area.io_timeout,
        },
    );
}

pub(crate) fn forget_held(lockspace: &str) {
    held_map().remove(lockspace);
}

/// Every lease held here now, by lockspace.
pub(crate) fn held_leases() -> Vec<(String, Held)> {
    held_map()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// How the last loss of a service's lease ended here, for its status.
#[derive(Clone, Debug)]
pub(crate) enum Loss {
    /// The storage was let go (or re-adopted): said once, as a comment.
    Handled(String),
    /// Something could not be let go: the status says `warn` with this.
    NotLetGo(String),
}

static LOSSES: Mutex<BTreeMap<String, Loss>> = Mutex::new(BTreeMap::new());

pub(crate) fn set_loss(service: &str, l: Loss) {
    // A probe a claim started counted only while the lease was held.
    crate::ip::forget_claim(service);
    LOSSES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(service.to_string(), l);
}

fn clear_loss(service: &str) {
    LOSSES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(service);
}

fn loss_of(service: &str) -> Option<Loss> {
    LOSSES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(service)
        .cloned()
}

#[derive(Clone, Debug)]
enum Join {
    Joining,
    Joined,
    Failed(String),
}

/// Where each lockspace's join stands, by lockspace name.
static JOINS: Mutex<BTreeMap<String, Join>> = Mutex::new(BTreeMap::new());

fn join_state(ls: &str) -> Option<Join> {
    JOINS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(ls)
        .cloned()
}

fn set_join_state(ls: &str, j: Join) {
    JOINS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ls.to_string(), j);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, SanlockError> + Send + 'static,
) -> Result<std::result::Result<T, SanlockError>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HelperError::failed(format!("sanlock call: {e}")))
}

fn host_id(reg: &Registry) -> Result<u64> {
    reg.node_conf().host_id.ok_or_else(|| {
        HelperError::InvalidConfig(format!(
            "{} has no host_id in [node] of /etc/ferry/ferry.conf: a node needs a unique sanlock \
             host id (1-2000) to hold leases",
            reg.node()
        ))
    })
}

fn lease_of(svc: &ServiceConfig) -> Option<(&str, &LeaseConfig)> {
    svc.resources.iter().find_map(|r| match &r.config {
        ferry_core::config::ResourceConfig::Lease(l) => Some((r.rid.as_str(), l)),
        _ => None,
    })
}

/// Join the lockspace of each lease of `svc` (2-3 s at io_timeout 1, 20 s
/// at 10), off the caller's path; then re-adopt a lease this node's previous
/// helper left orphaned.
pub fn join_in_background(reg: &Arc<Registry>, svc: &ServiceConfig) {
    let Some((rid, c)) = lease_of(svc) else {
        return;
    };
    crate::leasewatch::ensure_started(reg);
    let area = Area::new(&svc.name, c);
    let reg = reg.clone();
    let service = svc.name.clone();
    let rid = rid.to_string();
    tokio::spawn(async move {
        // The area may not be initialized yet (`ferry lease init`), or the
        // daemon not up: keep trying, quietly after the first report, as
        // long as the service is configured with this lease.
        let mut attempt = 0u32;
        while let Err(e) = join(&reg, &area).await {
            if attempt == 0 {
                warn!(service = %service, lockspace = %area.lockspace, "cannot join the lockspace (retrying every 5 s): {}", e.message());
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let still = reg.service(&service).ok().and_then(|svc| {
                lease_of(&svc).map(|(_, c)| {
                    Area::new(&svc.name, c).lockspace == area.lockspace && c.dev == area.dev
                })
            });
            if still != Some(true) {
                return;
            }
        }
        match readopt(&reg, &area, &service, &rid).await {
            Ok(true) => {
                info!(service = %service, lockspace = %area.lockspace, "re-adopted this node's orphaned lease")
            }
            Ok(false) => {}
            Err(e) => warn!(service = %service, "lease re-adoption: {}", e.message()),
        }
    });
}

async fn join(reg: &Registry, area: &Area) -> Result<()> {
    let id = host_id(reg)?;
    set_join_state(&area.lockspace, Join::Joining);
    let t0 = Instant::now();
    let a = area.clone();
    // The outcome is recorded by the blocking task itself: a caller that
    // stops waiting (the lease watch bounds a rejoin) must not leave the
    // state at Joining forever, or every later start waits and fails.
    let joined = blocking(move || {
        let r = sanlock::add_lockspace(&a.lockspace, id, &a.lockspace_disk(), a.io_timeout);
        match &r {
            Ok(()) => set_join_state(&a.lockspace, Join::Joined),
            Err(e) => set_join_state(&a.lockspace, Join::Failed(e.to_string())),
        }
        r
    })
    .await?;
    match joined {
        Ok(()) => {
            info!(lockspace = %area.lockspace, host_id = id, ms = t0.elapsed().as_millis() as u64, "joined the lockspace");
            Ok(())
        }
        Err(e) => Err(HelperError::failed(format!(
            "cannot join lockspace {} on {} as host_id {id}: {e}",
            area.lockspace, area.dev
        ))),
    }
}

/// Wait for a join under way; join now when none is.
async fn ensure_joined(reg: &Registry, area: &Area) -> Result<()> {
    // A join takes 2 x io_timeout plus a little; allow it twice over.
    let deadline = Instant::now() + Duration::from_secs(u64::from(area.io_timeout) * 4 + 10);
    loop {
        match join_state(&area.lockspace) {
            // Joined once; still joined unless the daemon restarted since.
            Some(Join::Joined) => {
                let a = area.clone();
                let id = host_id(reg)?;
                let joined = blocking(move || {
                    sanlock::lockspace_joined(&a.lockspace, id, &a.lockspace_disk())
                })
                .await?;
                if matches!(joined, Ok(true)) {
                    return Ok(());
                }
                return join(reg, area).await;
            }
            Some(Join::Joining) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Some(Join::Joining) => {
                return Err(HelperError::failed(format!(
                    "still joining lockspace {}: try again shortly",
                    area.lockspace
                )))
            }
            Some(Join::Failed(_)) | None => return join(reg, area).await,
        }
    }
}

/// Take back a persistent lease this host holds but no process does (the
/// previous helper died). Ok(false): there was none. sanlock's orphan
/// acquire also takes a *free* lease, so the disk must first show this
/// host as an owner: a helper that starts must not grab the leases of
/// services that run nowhere.
async fn readopt(reg: &Registry, area: &Area, service: &str, rid: &str) -> Result<bool> {
    let Some(me) = reg.node_conf().host_id else {
        return Ok(false);
    };
    if !owners(area).await?.contains(&me) || held_by_us(area) {
        return Ok(false);
    }
    let a = area.clone();
    let r = blocking(move || {
        let (id, reg) = registration_with_id()?;
        reg.acquire(
            &a.lockspace,
            LeaseConfig::RESOURCE,
            &a.resource_disk(),
            AcquireFlags {
                persistent: true,
                orphan: true,
                owner_nowait: true,
            },
        )
        .map(|()| id)
    })
    .await?;
    match r {
        Ok(id) => {
            set_held(area, service, rid, id);
            Ok(true)
        }
        Err(e) => {
            forget_registration_on(&e);
            Err(HelperError::failed(format!(
                "cannot re-adopt lease {}: {e}",
                area.label()
            )))
        }
    }
}

/// Does this helper hold the lease now? From what it acquired, through a
/// registration that is still the current one and still open: never a
/// node-wide inquire, which one odd resource of another service can fail.
fn held_by_us(area: &Area) -> bool {
    let Some(held) = held_map().get(&area.lockspace).map(|h| h.registration) else {
        return false;
    };
    matches!(current_registration(), Some((id, r)) if id == held && !r.connection_closed())
}

/// The hosts holding the lease (empty: free), read from the disk.
async fn owners(area: &Area) -> Result<Vec<u64>> {
    let a = area.clone();
    blocking(move || sanlock::owners(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk()))
        .await?
        .map_err(|e| HelperError::failed(format!("cannot read the lease on {}: {e}", area.dev)))
}

fn holder_names(reg: &Registry, ids: &[u64]) -> String {
    ids.iter()
        .map(
            |id| match reg.node_conf().node_of_host_id(*id, reg.node()) {
                Some(n) => format!("{n} (host_id {id})"),
                None => format!("host_id {id}"),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// Is the service's lease held by this node's helper? `None`: the service
/// has no lease. The guards ask this before anything touches the disks.
pub async fn held_here(svc: &ServiceConfig) -> Result<Option<(String, bool)>> {
    let Some((rid, c)) = lease_of(svc) else {
        return Ok(None);
    };
    let held = held_by_us(&Area::new(&svc.name, c));
    Ok(Some((rid.to_string(), held)))
}

/// The nodes other than this one that hold the service's lease, named;
/// `None` when there is none (or the service has no lease).
pub async fn held_elsewhere(reg: &Registry, svc: &ServiceConfig) -> Result<Option<String>> {
    let Some((_, c)) = lease_of(svc) else {
        return Ok(None);
    };
    let area = Area::new(&svc.name, c);
    let me = reg.node_conf().host_id;
    // An owner whose host lease is dead (or gone, or free) no longer holds
    // anything: sanlock lets the lease be taken over, so must we. That
    // needs the lockspace joined here; until then every owner counts.
    let a = area.clone();
    let states = blocking(move || {
        sanlock::owner_states(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk())
    })
    .await?;
    let blocking_owners: Vec<u64> = match states {
        Ok(states) => states
            .into_iter()
            .filter(|o| {
                matches!(
                    o.state,
                    HostState::Live | HostState::Fail | HostState::Unknown
                )
            })
            .map(|o| o.host_id)
            .collect(),
        Err(_) => owners(&area).await?,
    };
    let others: Vec<u64> = blocking_owners
        .into_iter()
        .filter(|id| Some(*id) != me)
        .collect();
    Ok((!others.is_empty()).then(|| {
        format!(
            "lease {} is held by {}",
            area.label(),
            holder_names(reg, &others)
        )
    }))
}

pub async fn status(
    reg: &Registry,
    svc: &ServiceConfig,
    rid: &str,
    c: &LeaseConfig,
) -> ResourceStatus {
    let area = Area::new(&svc.name, c);
    let label = area.label();
    let mut comments = Vec::new();
    match join_state(&area.lockspace) {
        Some(Join::Joining) => comments.push("joining the lockspace".to_string()),
        Some(Join::Failed(e)) => comments.push(format!("lockspace not joined: {e}")),
        _ => {}
    }
    match loss_of(&svc.name) {
        Some(Loss::NotLetGo(why)) => {
            return ResourceStatus::new(rid, State::Warn, &label).with_comment(why)
        }
        Some(Loss::Handled(what)) => comments.push(what),
        None => {}
    }
    let s = match held_by_us(&area) {
        true => ResourceStatus::new(rid, State::Up, &label),
        false => match owners(&area).await {
            Ok(ids) if ids.is_empty() => ResourceStatus::new(rid, State::Down, &label),
            Ok(ids) => {
                let mine = reg.node_conf().host_id.is_some_and(|h| ids.contains(&h));
                let text = if mine {
                    "orphaned: this node's host id holds it, no helper process does".to_string()
                } else {
                    format!("{LEASE_HELD_ELSEWHERE}{}", holder_names(reg, &ids))
                };
                let s = ResourceStatus::new(rid, State::Warn, &label).with_comment(text);
                // A holder that stopped renewing its host lease: say so, an
                // operator then knows the lease is on its way to expiry.
                let a = area.clone();
                let states = blocking(move || {
                    sanlock::owner_states(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk())
                })
                .await;
                match states {
                    Ok(Ok(states)) => states
                        .iter()
                        .filter(|o| !matches!(o.state, HostState::Live | HostState::Unknown))
                        .fold(s, |s, o| {
                            s.with_comment(format!(
                                "host_id {} is {:?} here: its lease frees itself 8 x io_timeout + 60 s \
                                 after its last renewal",
                                o.host_id, o.state
                            ))
                        }),
                    _ => s,
                }
            }
            Err(e) => ResourceStatus::new(rid, State::Warn, &label).with_comment(e.message()),
        },
    };
    comments.into_iter().fold(s, |s, c| s.with_comment(c))
}

async fn acquire(reg: &Registry, svc: &ServiceConfig, c: &LeaseConfig) -> Result<Vec<String>> {
    let area = Area::new(&svc.name, c);
    host_id(reg)?;
    let rid = lease_of(svc).map_or("lease", |(r, _)| r);
    ensure_joined(reg, &area).await?;
    if held_by_us(&area) {
        return Ok(vec![format!("lease {} is already held here", area.label())]);
    }
    let taken = |id| {
        set_held(&area, &svc.name, rid, id);
        clear_loss(&svc.name);
    };
    let mut e = match acquire_once(&area).await? {
        Ok(id) => {
            taken(id);
            return Ok(vec![format!("acquire lease {}", area.label())]);
        }
        Err(e) => e,
    };
    forget_registration_on(&e);
    // A holder the cluster fenced: free its host lease, then once more.
    if e.is_held_elsewhere() {
        if let Some(freed) = crate::takeover::free_fenced_holder(reg, svc).await? {
            match acquire_once(&area).await? {
                Ok(id) => {
                    taken(id);
                    return Ok(vec![freed, format!("acquire lease {}", area.label())]);
                }
                Err(again) => e = again,
            }
        }
    }
    if e.is_orphan_here() && readopt(reg, &area, &svc.name, rid).await? {
        clear_loss(&svc.name);
        return Ok(vec![format!(
            "re-adopt this node's orphaned lease {}",
            area.label()
        )]);
    }
    let me = reg.node_conf().host_id;
    let others: Vec<u64> = owners(&area)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|id| Some(*id) != me)
        .collect();
    if e.is_held_elsewhere() || !others.is_empty() {
        let ids = if others.is_empty() {
            "another host".to_string()
        } else {
            holder_names(reg, &others)
        };
        return Err(HelperError::LeaseHeld(format!(
            "lease {} is held by {ids}: the service runs there (or that node died less than \
             8 x io_timeout + 60 s = {} s ago, after which the lease frees itself; {e})",
            area.label(),
            8 * u64::from(area.io_timeout) + 60
        )));
    }
    Err(HelperError::failed(format!(
        "cannot acquire lease {}: {e}",
        area.label()
    )))
}

/// One acquire through the current registration: the registration's id
/// with the lease, or sanlock's refusal.
async fn acquire_once(area: &Area) -> Result<std::result::Result<u64, SanlockError>> {
    let a = area.clone();
    blocking(move || {
        let (id, r) = registration_with_id()?;
        r.acquire(
            &a.lockspace,
            LeaseConfig::RESOURCE,
            &a.resource_disk(),
            AcquireFlags {
                persistent: true,
                orphan: false,
                // A refusal must come at once, not after 2 x io_timeout.
                owner_nowait: true,
            },
        )
        .map(|()| id)
    })
    .await
}

async fn release(reg: &Registry, svc: &ServiceConfig, c: &LeaseConfig) -> Result<Vec<String>> {
    let area = Area::new(&svc.name, c);
    let a = area.clone();
    clear_loss(&svc.name);
    crate::ip::forget_claim(&svc.name);
    if held_by_us(&area) {
        blocking(move || {
            registration()?.release(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk())
        })
        .await?
        .map_err(|e| {
            forget_registration_on(&e);
            HelperError::failed(format!("cannot release lease {}: {e}", area.label()))
        })?;
        forget_held(&area.lockspace);
        return Ok(vec![format!("release lease {}", area.label())]);
    }
    forget_held(&area.lockspace);
    let ids = owners(&area).await?;
    if reg.node_conf().host_id.is_some_and(|h| ids.contains(&h)) {
        blocking(move || {
            sanlock::release_orphan(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk())
        })
        .await?
        .map_err(|e| {
            HelperError::failed(format!(
                "cannot release orphaned lease {}: {e}",
                area.label()
            ))
        })?;
        return Ok(vec![format!(
            "release this node's orphaned lease {}",
            area.label()
        )]);
    }
    Ok(vec![format!("lease {} is not held here", area.label())])
}

/// Write a fresh lease area, only where both its parts read as never
/// initialised (zeros), straight from the disk. Anything else is refused
/// with what was found: another service's lockspace or lease (the area is
/// shared by mistake, and rewriting it would void that service's lease on
/// a live holder), this service's own (already done), another magic, or an
/// I/O error. Starting over is a deliberate act: clear the area by hand
/// once the service is stopped everywhere.
async fn init(reg: &Registry, svc: &ServiceConfig, c: &LeaseConfig) -> Result<Vec<String>> {
    let area = Area::new(&svc.name, c);
    let a = area.clone();
    let read = tokio::task::spawn_blocking(move || {
        sanlock::read_area(&a.dev, a.offset, ferry_core::config::LEASE_PART_BYTES)
    })
    .await
    .map_err(|e| HelperError::failed(format!("reading {}: {e}", area.dev)))?;
    let (ls, res) = read.map_err(|e| {
        HelperError::Busy(format!(
            "cannot read the lease area {}:{} ({e}): refusing to write it",
            area.dev, area.offset
        ))
    })?;
    if ls != Leader::Empty || res != Leader::Empty {
        let ours = ls == Leader::Lockspace(area.lockspace.clone())
            && res == Leader::Resource(area.lockspace.clone(), LeaseConfig::RESOURCE.into());
        if ours {
            let held = match owners(&area).await {
                Ok(ids) if ids.is_empty() => " (free now)".to_string(),
                Ok(ids) => format!(" (held by {})", holder_names(reg, &ids)),
                Err(_) => String::new(),
            };
            return Err(HelperError::Busy(format!(
                "{} already holds lease {}{held}: refusing to overwrite it. To start over, stop \
                 the service on every node and clear the area by hand",
                area.dev,
                area.label()
            )));
        }
        return Err(HelperError::Busy(format!(
            "the lease area {}:{} is not empty: its lockspace part holds {ls}, its lease part \
             {res}. Refusing to overwrite it: is the area configured for two services, or is \
             the offset wrong?",
            area.dev, area.offset
        )));
    }
    let a = area.clone();
    blocking(move || {
        sanlock::init_lockspace(&a.lockspace, &a.lockspace_disk(), a.io_timeout)?;
        sanlock::init_resource(&a.lockspace, LeaseConfig::RESOURCE, &a.resource_disk())
    })
    .await?
    .map_err(|e| HelperError::failed(format!("cannot initialize {}: {e}", area.label())))?;
    let log = vec![
        format!(
            "write lockspace {} at {}:{}",
            area.lockspace, area.dev, area.offset
        ),
        format!(
            "write lease {}:{} at {}:{}",
            area.lockspace,
            LeaseConfig::RESOURCE,
            area.dev,
            area.resource_offset
        ),
    ];
    set_join_state(
        &area.lockspace,
        Join::Failed("not joined since init".into()),
    );
    Ok(log)
}

/// For the lease watch: the service's lease area and config.
fn service_lease(reg: &Registry, service: &str) -> Result<(Arc<ServiceConfig>, LeaseConfig)> {
    let svc = reg.service(service)?;
    let c = lease_of(&svc)
        .map(|(_, c)| c.clone())
        .ok_or_else(|| HelperError::failed(format!("service '{service}' has no lease any more")))?;
    Ok((svc, c))
}

/// After the daemon connection was lost: register with the (new) daemon
/// and join the lockspace again. Slow when the daemon came back under
/// another host name (it must wait out its old delta lease): the caller
/// bounds it.
pub(crate) async fn rejoin(reg: &Registry, service: &str) -> Result<()> {
    let (svc, c) = service_lease(reg, service)?;
    blocking(|| registration().map(|_| ()))
        .await?
        .map_err(|e| HelperError::failed(format!("cannot register with sanlock: {e}")))?;
    ensure_joined(reg, &Area::new(&svc.name, &c)).await
}

/// Take the lease again through the new registration: what the disk says
/// is this host's (an older generation of it) comes back at once; a lease
/// another host took meanwhile is refused.
pub(crate) async fn reacquire(reg: &Registry, service: &str) -> Result<Vec<String>> {
    let (svc, c) = service_lease(reg, service)?;
    acquire(reg, &svc, &c).await
}

/// Give the lease back after the storage was let go: through the
/// registration that holds it, or as this host's orphan. Either also tells
/// the daemon the helper no longer uses the failed lockspace, so it stops
/// signalling.
pub(crate) async fn release_after_loss(reg: &Registry, service: &str) -> Result<Vec<String>> {
    let (svc, c) = service_lease(reg, service)?;
    let r = release(reg, &svc, &c).await;
    forget_held(&LeaseConfig::lockspace(service));
    r
}

fn config(ctx: &ResCtx) -> Result<(Arc<ServiceConfig>, LeaseConfig)> {
    ctx.config()
}

#[interface(name = "io.ferry.Helper1.Lease")]
impl LeaseObject {
    /// `(state, label, comments)`: up = held here, down = free, warn = held
    /// by another node (named).
    async fn check(&self) -> Result<CheckResult> {
        let (svc, c) = config(&self.ctx)?;
        Ok(status(&self.ctx.reg, &svc, &self.ctx.rid, &c)
            .await
            .into_check())
    }

    /// Write a fresh lockspace and lease on the area (once, before first use).
    async fn init(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.lease.init", || async {
            let (svc, c) = config(ctx)?;
            let log = init(&ctx.reg, &svc, &c).await?;
            join_in_background(&ctx.reg, &svc);
            Ok(log)
        })
        .await
    }

    /// Take the lease: refused at once (LeaseHeld) when another node holds it.
    async fn acquire(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.lease.acquire", || async {
            let (svc, c) = config(ctx)?;
            acquire(&ctx.reg, &svc, &c).await
        })
        .await
    }

    /// Take the lease before the address (a service with a lease): refused
    /// like Acquire when another node holds it. Once it is held, the
    /// free-address probe of every address of the service starts here in
    /// the background, and the storage may come up while it runs; Ip.Add
    /// then adds the address only if that probe passed (guard.rs, rule 2).
    async fn claim(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        // Same polkit action as Acquire (it takes the same lease); its own
        // order rule.
        crate::auth::privileged(
            &ctx.reg,
            conn,
            &header,
            "io.ferry.lease.acquire",
            &ctx.service,
            &ctx.rid,
            || async {
                crate::guard::check(ctx, crate::guard::CLAIM).await?;
                let (svc, c) = config(ctx)?;
                let mut log = acquire(&ctx.reg, &svc, &c).await?;
                crate::ip::start_claim_probes(&svc);
                if let Some(last) = log.last_mut() {
                    last.push_str("; the free-address probe runs meanwhile");
                }
                Ok(log)
            },
        )
        .await
    }

    /// Give the lease back; refused while the disks are still in use here.
    async fn release(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.lease.release", || async {
            let (svc, c) = config(ctx)?;
            release(&ctx.reg, &svc, &c).await
        })
        .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn rid(&self) -> String {
        self.ctx.rid.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn settings(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Ok((svc, c)) = config(&self.ctx) {
            m.insert("lockspace".into(), LeaseConfig::lockspace(&svc.name));
            m.insert("dev".into(), c.dev);
            m.insert("offset".into(), c.offset.to_string());
            m.insert("io_timeout".into(), c.io_timeout.to_string());
        }
        m
    }
}
