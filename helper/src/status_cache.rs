//! What a service's status costs. Computing it runs `vgs`/`lvs`, reads the
//! lease area and asks docker, and anyone on the bus may ask. So callers
//! without a stake get a recent result ([`MAX_AGE`]), computed at most once
//! per [`MAX_AGE`] per service however many ask at once; root (Pacemaker,
//! sudo) and the holder of the service's lock (a running start or stop)
//! always get a fresh one. Every privileged call on the service makes the
//! cached result stale, so nobody sees a state from before an action that
//! has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::status::ResourceStatus;
use zbus::message::Header;

use crate::error::Result;
use crate::registry::Registry;

/// How old a status handed to a caller without a stake may be.
pub const MAX_AGE: Duration = Duration::from_secs(1);

struct Entry {
    at: Instant,
    generation: u64,
    /// The mount table when it was computed: a mount made or removed
    /// behind ferry's back (an operator's hand, a crash) makes it stale at
    /// once, not a second later.
    mounts: u64,
    statuses: Vec<ResourceStatus>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Bumped by [`StatusCache::invalidate`]; an entry of an older one is stale.
    generations: HashMap<String, u64>,
    /// One computation at a time per service.
    flights: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Default)]
pub struct StatusCache {
    inner: Mutex<Inner>,
}

impl StatusCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whatever was cached of `service` is stale from now on.
    pub fn invalidate(&self, service: &str) {
        let mut i = self.inner();
        *i.generations.entry(service.to_string()).or_default() += 1;
        i.entries.remove(service);
    }

    /// Forget a service entirely (it is no longer loaded).
    pub fn forget(&self, service: &str) {
        let mut i = self.inner();
        i.entries.remove(service);
        i.flights.remove(service);
        *i.generations.entry(service.to_string()).or_default() += 1;
    }

    fn fresh_entry(&self, service: &str, max_age: Duration) -> Option<Vec<ResourceStatus>> {
        let i = self.inner();
        let generation = i.generations.get(service).copied().unwrap_or(0);
        i.entries
            .get(service)
            .filter(|e| {
                e.generation == generation && e.at.elapsed() < max_age && e.mounts == mount_table()
            })
            .map(|e| e.statuses.clone())
    }

    fn generation(&self, service: &str) -> u64 {
        self.inner().generations.get(service).copied().unwrap_or(0)
    }

    fn store(&self, service: &str, generation: u64, mounts: u64, statuses: &[ResourceStatus]) {
        let mut i = self.inner();
        if i.generations.get(service).copied().unwrap_or(0) == generation {
            i.entries.insert(
                service.to_string(),
                Entry {
                    at: Instant::now(),
                    generation,
                    mounts,
                    statuses: statuses.to_vec(),
                },
            );
        }
    }

    fn flight(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner()
            .flights
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    /// The statuses, at most `max_age` old (`Duration::ZERO`: fresh),
    /// computed by `compute` when needed, once at a time per service.
    pub async fn get<F, Fut>(
        &self,
        service: &str,
        max_age: Duration,
        compute: F,
    ) -> Result<Vec<ResourceStatus>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<ResourceStatus>>>,
    {
        if !max_age.is_zero() {
            if let Some(s) = self.fresh_entry(service, max_age) {
                return Ok(s);
            }
        }
        let flight = self.flight(service);
        let _one = flight.lock().await;
        // Someone else may have computed it while we waited.
        if !max_age.is_zero() {
            if let Some(s) = self.fresh_entry(service, max_age) {
                return Ok(s);
            }
        }
        // Read before computing: an action that ends meanwhile makes this
        // result stale.
        let generation = self.generation(service);
        let mounts = mount_table();
        let statuses = compute().await?;
        self.store(service, generation, mounts, &statuses);
        Ok(statuses)
    }
}

/// A fingerprint of this node's mount table (a read of mountinfo: tens of
/// microseconds, against milliseconds for a status).
fn mount_table() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Does this caller get a fresh status: root, or the service lock's holder.
async fn wants_fresh(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    service: &str,
) -> bool {
    let Some(sender) = header.sender() else {
        return false;
    };
    if reg
        .holds()
        .holder(service)
        .is_some_and(|h| h.sender == sender.as_str())
    {
        return true;
    }
    // One round trip to the bus daemon, nothing spawned.
    let sender = sender.to_owned();
    let uid = async {
        let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
        dbus.get_connection_unix_user(sender.into()).await.ok()
    };
    uid.await == Some(0)
}

/// The service's statuses as a caller of `Status` or `Check` gets them
/// (see the module doc), with the kept-config entry when there is one.
pub async fn statuses_for(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    service: &str,
) -> Result<Vec<ResourceStatus>> {
    let svc = reg.service(service)?;
    let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
    // A status call of the holder is part of its action.
    let _active = reg.holds().activity(service, &sender);
    let max_age = if wants_fresh(reg, conn, header, service).await {
        Duration::ZERO
    } else {
        MAX_AGE
    };
    let mut out = reg
        .status_cache()
        .get(service, max_age, || crate::service::statuses_of(reg, svc))
        .await?;
    if let Some(entry) = reg.config_problem(service) {
        out.push(entry);
    }
    Ok(out)
}

/// One resource's status out of [`statuses_for`], for `Check`.
pub async fn check_for(
    reg: &Registry,
    conn: &zbus::Connection,
    header: &Header<'_>,
    service: &str,
    rid: &str,
) -> Result<ResourceStatus> {
    statuses_for(reg, conn, header, service)
        .await?
        .into_iter()
        .find(|s| s.rid == rid)
        .ok_or_else(|| {
            crate::error::HelperError::UnknownService(format!(
                "service '{service}' has no resource {rid} any more"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::status::State;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn one(n: u32) -> Vec<ResourceStatus> {
        vec![ResourceStatus::new("ip#1", State::Up, format!("{n}"))]
    }

    #[tokio::test]
    async fn callers_without_a_stake_share_one_computation() {
        let c = StatusCache::default();
        let runs = AtomicU32::new(0);
        let compute = || async {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            Ok(one(n))
        };
        for _ in 0..100 {
            let s = c.get("s", MAX_AGE, compute).await.unwrap_or_default();
            assert_eq!(s[0].label, "0");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // a fresh caller computes, and refreshes the cache for the others
        let s = c
            .get("s", Duration::ZERO, compute)
            .await
            .unwrap_or_default();
        assert_eq!(s[0].label, "1");
        let s = c.get("s", MAX_AGE, compute).await.unwrap_or_default();
        assert_eq!(s[0].label, "1");
        // an action on the service makes the cached result stale
        c.invalidate("s");
        let s = c.get("s", MAX_AGE, compute).await.unwrap_or_default();
        assert_eq!(s[0].label, "2");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_result_computed_across_an_action_is_not_kept() {
        let c = StatusCache::default();
        let s = c
            .get("s", MAX_AGE, || async {
                c.invalidate("s");
                Ok(one(7))
            })
            .await
            .unwrap_or_default();
        assert_eq!(s[0].label, "7");
        assert!(c.fresh_entry("s", MAX_AGE).is_none());
    }
}
