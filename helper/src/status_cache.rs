//! What a service's status costs, kept cheap without ever being stale.
//!
//! Every caller gets the state of now, from cheap checks: the address from
//! the kernel (getifaddrs), the lease from sanlock's state in this helper,
//! the filesystems from /proc/self/mountinfo and /sys, each VG from what the
//! helper last read or set while its metadata on disk is unchanged (vg.rs),
//! and each container from its last observation here, kept while its main
//! process and the service's docker daemon are the same processes (pid and
//! start time in /proc), its engine's image store is unchanged (a tag moved
//! behind ferry's back is image drift), and no action ran on the service
//! since. Nothing spawns LVM or asks dockerd then. `Service.Refresh`
//! (`ferry status --refresh`) forgets it all: the next status asks LVM and
//! dockerd; for callers other than root, at most once a second per service,
//! so that Refresh + Status in a loop cannot make the helper run LVM at will.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_core::config::{ContainerConfig, ServiceConfig};
use ferry_core::status::ResourceStatus;
use zbus::message::Header;

use crate::error::Result;
use crate::registry::Registry;

/// A container's last observed status, and the processes it holds for.
struct Seen {
    generation: u64,
    status: ResourceStatus,
    container: Proc,
    daemon: Option<Proc>,
    images: Option<Stamp>,
}

/// When a file last changed, as far as stat tells.
type Stamp = (std::time::SystemTime, u64);

/// The engine's record of image names: dockerd's
/// `<data root>/image/<driver>/repositories.json`, podman's
/// `<root>/overlay-images/images.json`. Both are rewritten whenever a tag
/// moves (`docker tag`, `commit`, `load`, `pull`).
fn image_store_stamp(svc: &ServiceConfig, c: &ContainerConfig) -> Option<Stamp> {
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    match c.runtime {
        ferry_core::config::ContainerRuntime::Docker => {
            let dir = std::path::Path::new(svc.docker_data_dir.as_deref()?).join("image");
            // One driver directory in practice; the latest change of any.
            std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter_map(|e| stamp(&e.path().join("repositories.json")))
                .max()
        }
        ferry_core::config::ContainerRuntime::Podman => stamp(
            &std::path::Path::new(svc.podman_data_dir.as_deref()?)
                .join("overlay-images/images.json"),
        ),
    }
}

/// A process, told apart from a later one with the same pid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Proc {
    pid: i64,
    start: u64,
}

impl Proc {
    /// The process `pid` as it is now; `None` when gone or a zombie.
    fn now(pid: i64) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command's closing parenthesis: state, then field 22
        // (starttime) is the 20th.
        let rest = stat.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace();
        let state = f.next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        let start = f.nth(18)?.parse().ok()?;
        Some(Proc { pid, start })
    }

    fn still_runs(&self) -> bool {
        Proc::now(self.pid) == Some(*self)
    }
}

#[derive(Default)]
struct Inner {
    /// Bumped by [`StatusCache::invalidate`]; a container seen under an
    /// older one is looked at again.
    generations: HashMap<String, u64>,
    /// (service, rid) → the container's last status.
    seen: HashMap<(String, String), Seen>,
    /// One look at dockerd at a time per service.
    flights: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// When a caller other than root last made a Refresh count.
    refreshed: HashMap<String, std::time::Instant>,
}

#[derive(Default)]
pub struct StatusCache {
    inner: Mutex<Inner>,
}

impl StatusCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An action ran on the service: what was seen of it is looked at again.
    pub fn invalidate(&self, service: &str) {
        let mut i = self.inner();
        *i.generations.entry(service.to_string()).or_default() += 1;
        i.seen.retain(|(s, _), _| s != service);
    }

    /// Forget a service entirely (its config changed or went).
    pub fn forget(&self, service: &str) {
        self.invalidate(service);
        self.inner().flights.remove(service);
    }

    /// A Refresh by a caller other than root counts at most once per
    /// REFRESH_EVERY per service.
    fn refresh_allowed(&self, service: &str) -> bool {
        let mut i = self.inner();
        let now = std::time::Instant::now();
        if i.refreshed
            .get(service)
            .is_some_and(|t| now.duration_since(*t) < REFRESH_EVERY)
        {
            return false;
        }
        i.refreshed.insert(service.to_string(), now);
        true
    }

    fn generation(&self, service: &str) -> u64 {
        self.inner().generations.get(service).copied().unwrap_or(0)
    }

    fn flight(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner()
            .flights
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    fn still_valid(
        &self,
        svc: &ServiceConfig,
        rid: &str,
        c: &ContainerConfig,
    ) -> Option<ResourceStatus> {
        let i = self.inner();
        let generation = i.generations.get(&svc.name).copied().unwrap_or(0);
        let s = i.seen.get(&(svc.name.clone(), rid.to_string()))?;
        let holds = s.generation == generation
            && s.container.still_runs()
            && s.daemon.is_none_or(|d| d.still_runs())
            && s.images == image_store_stamp(svc, c);
        holds.then(|| s.status.clone())
    }

    /// The container's status: the last one seen while its processes still
    /// run and no action intervened, else asked of dockerd.
    pub async fn container(
        &self,
        svc: &ServiceConfig,
        rid: &str,
        c: &ContainerConfig,
    ) -> ResourceStatus {
        if let Some(s) = self.still_valid(svc, rid, c) {
            return s;
        }
        let flight = self.flight(&svc.name);
        let _one = flight.lock().await;
        if let Some(s) = self.still_valid(svc, rid, c) {
            return s;
        }
        // Read before asking: an action that ends meanwhile voids the answer.
        let generation = self.generation(&svc.name);
        let daemon = daemon_proc(svc);
        let images = image_store_stamp(svc, c);
        let (status, pid) = crate::container::status(svc, rid, c).await;
        // Only a running container is kept: its process is what tells that
        // it stopped. A private daemon must be known too.
        let container = pid.and_then(Proc::now);
        let daemon_known = svc.docker_data_dir.is_none() || daemon.is_some();
        if let (Some(container), true) = (container, daemon_known) {
            let mut i = self.inner();
            if i.generations.get(&svc.name).copied().unwrap_or(0) == generation {
                i.seen.insert(
                    (svc.name.clone(), rid.to_string()),
                    Seen {
                        generation,
                        status: status.clone(),
                        container,
                        daemon,
                        images,
                    },
                );
            }
        }
        status
    }
}

/// The service's private dockerd, from its pidfile.
fn daemon_proc(svc: &ServiceConfig) -> Option<Proc> {
    svc.docker_data_dir.as_ref()?;
    let p = crate::container::daemon::Paths::new(&svc.name);
    let pid = std::fs::read_to_string(&p.docker_pid).ok()?;
    Proc::now(pid.trim().parse().ok()?)
}

/// The service's statuses as a caller of `Status` or `Check` gets them
/// (see the module doc), with the kept-config entry when there is one.
pub async fn statuses_for(
    reg: &Registry,
    _conn: &zbus::Connection,
    header: &Header<'_>,
    service: &str,
) -> Result<Vec<ResourceStatus>> {
    let svc = reg.service(service)?;
    let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
    // A status call of the holder is part of its action.
    let _active = reg.holds().activity(service, &sender);
    let mut out = crate::service::statuses_of(reg, svc).await?;
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

/// `Service.Refresh`: forget what is known of the service's VGs and
/// containers; the next status asks LVM and dockerd.
/// How often a caller other than root may make `Refresh` count.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `Service.Refresh`: `false` when a caller other than root asked again
/// within REFRESH_EVERY (nothing forgotten; what it gets is that recent).
pub fn refresh(reg: &Registry, svc: &ServiceConfig, root: bool) -> bool {
    if !root && !reg.status_cache().refresh_allowed(&svc.name) {
        return false;
    }
    reg.status_cache().invalidate(&svc.name);
    for r in &svc.resources {
        if let ferry_core::config::ResourceConfig::Vg(c) = &r.config {
            crate::vg::forget(&c.vgname);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_by_others_than_root_counts_once_a_second_per_service() {
        let c = StatusCache::default();
        assert!(c.refresh_allowed("a"));
        assert!(!c.refresh_allowed("a"));
        assert!(c.refresh_allowed("b"));
        c.inner().refreshed.insert(
            "a".into(),
            std::time::Instant::now() - REFRESH_EVERY - std::time::Duration::from_millis(1),
        );
        assert!(c.refresh_allowed("a"));
    }

    #[test]
    fn this_process_is_itself_and_a_changed_start_is_another() {
        let me = Proc::now(i64::from(std::process::id())).expect("own /proc/self/stat");
        assert!(me.still_runs());
        let other = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(!other.still_runs());
        assert!(Proc::now(i64::from(i32::MAX)).is_none());
    }

    /// The lab's service with its filesystems under `dir`, and its container.
    fn lab_service(dir: &str) -> (ServiceConfig, ContainerConfig) {
        let text = include_str!("../../tests/lab/busybox.conf").replace("/srv/busybox", dir);
        let svc = ferry_core::config::parse_service("busybox.conf", &text).expect("lab config");
        let c = svc
            .resources
            .iter()
            .find_map(|r| match &r.config {
                ferry_core::config::ResourceConfig::Container(c) => Some(c.clone()),
                _ => None,
            })
            .expect("a container");
        (svc, c)
    }

    fn seen(c: &StatusCache, svc: &ServiceConfig, cc: &ContainerConfig) {
        let me = Proc::now(i64::from(std::process::id())).expect("own /proc/self/stat");
        c.inner().seen.insert(
            (svc.name.clone(), "container#1".into()),
            Seen {
                generation: 0,
                status: ResourceStatus::new("container#1", ferry_core::status::State::Up, "x"),
                container: me,
                daemon: None,
                images: image_store_stamp(svc, cc),
            },
        );
    }

    #[test]
    fn an_action_voids_what_was_seen() {
        let c = StatusCache::default();
        let (svc, cc) = lab_service("/nonexistent/ferry-test");
        seen(&c, &svc, &cc);
        assert!(c.still_valid(&svc, "container#1", &cc).is_some());
        c.invalidate(&svc.name);
        assert!(c.still_valid(&svc, "container#1", &cc).is_none());
    }

    #[test]
    fn a_tag_moved_in_the_image_store_voids_what_was_seen() {
        let dir = std::env::temp_dir().join(format!("ferry-status-cache-{}", std::process::id()));
        let repos = dir.join("docker/image/overlay2");
        std::fs::create_dir_all(&repos).expect("temp dir");
        let file = repos.join("repositories.json");
        std::fs::write(&file, "{}").expect("write");
        let c = StatusCache::default();
        let (svc, cc) = lab_service(&dir.display().to_string());
        seen(&c, &svc, &cc);
        assert!(c.still_valid(&svc, "container#1", &cc).is_some());
        // `docker commit` under the configured tag rewrites the file
        std::fs::write(&file, r#"{"Repositories":{"local/busybox":{}}}"#).expect("write");
        assert!(c.still_valid(&svc, "container#1", &cc).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
