//! Containers of `type = podman`: rootful podman, driven through its CLI,
//! with no daemon.
//!
//! - **Storage** (`--root`): `podman_data_dir`, on the service's shared
//!   filesystem. It holds the images, the container's layers and libpod's
//!   database (`libpod/bolt_state.db`), so the very same container (same id,
//!   same state) comes up on the other node.
//! - **Run root and tmp dir**: node-local, `/run/ferry/<svc>/podman/{run,tmp}`.
//!   The same path on every node: the database records both and refuses
//!   another. On tmpfs, as podman expects: a tmp dir without its `alive` file
//!   makes podman "refresh" (reset container states, remake locks), which is
//!   what a container that comes from another node needs. A clean stop
//!   removes both, so that every start after a relocation begins that way.
//! - **Locks**: file locks in the tmp dir (`lock_type = "file"` in a
//!   containers.conf of ferry's own, given by `CONTAINERS_CONF`, which also
//!   keeps the host's containers.conf out). The default, one shared-memory
//!   segment for every rootful podman of the host, would let a refresh of
//!   this service free the locks of every other podman store on the node.
//! - **Network**: `--network host`, as the docker service: the container
//!   shares the node's network namespace, and so serves on the service
//!   address once ip#N added it.
//! - **Stop**: `podman stop -t stop_timeout`, then conmon (podman's per
//!   container monitor, which runs `podman container cleanup` when the
//!   container exits) must be gone: it holds the filesystem, as a dockerd
//!   does. One that outlives the stop makes the stop fail, never report down.
//!
//! Nothing runs podman on a `podman_data_dir` that is not on a mounted
//! filesystem: podman would create a fresh, empty store on the node's root
//! fs below the mountpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_core::config::{ContainerConfig, ServiceConfig};
use ferry_core::status::{ResourceStatus, State};
use tracing::info;

use super::daemon;
use super::engine::{self, short, Observation, Observed, Waited};
use crate::error::{HelperError, Result};

/// Node-local state of podman services: `/run/ferry/<svc>/podman/`.
pub const RUN_BASE: &str = "/run/ferry";
/// Quick calls (inspect, create, start); a stop gets stop_timeout more.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long conmon and its cleanup may take to go after the container did.
const CONMON_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_EXIT: Duration = Duration::from_millis(5);

/// ferry's containers.conf for every podman service: file locks in the tmp
/// dir, no systemd (cgroupfs, events in a file): the same on every node.
pub const CONTAINERS_CONF: &str =
    "# written by ferry-helper: podman settings of one ferry service\n\
[engine]\n\
lock_type = \"file\"\n\
cgroup_manager = \"cgroupfs\"\n\
events_logger = \"file\"\n";

/// Every node-local path of one podman service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state: PathBuf,
    pub run_root: PathBuf,
    pub tmp_dir: PathBuf,
    pub conf: PathBuf,
}

impl Paths {
    pub fn new(service: &str) -> Paths {
        let state = Path::new(RUN_BASE).join(service).join("podman");
        Paths {
            run_root: state.join("run"),
            tmp_dir: state.join("tmp"),
            conf: state.join("containers.conf"),
            state,
        }
    }
}

fn data_dir(svc: &ServiceConfig) -> Result<&str> {
    svc.podman_data_dir.as_deref().ok_or_else(|| {
        HelperError::failed(format!(
            "service '{}' has a type = podman container but no podman_data_dir",
            svc.name
        ))
    })
}

/// The global options every podman call of the service gets.
pub fn global_args(p: &Paths, data_dir: &str) -> Vec<String> {
    [
        "--root",
        data_dir,
        "--runroot",
        &p.run_root.to_string_lossy(),
        "--tmpdir",
        &p.tmp_dir.to_string_lossy(),
        "--storage-driver",
        "overlay",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]
    .map(String::from)
    .into()
}

/// The storage root must be on the service's mounted filesystem.
pub fn storage_mounted(svc: &ServiceConfig) -> Result<()> {
    let dir = data_dir(svc)?;
    let mounts = crate::fs::mounts()?;
    daemon::check_data_root(&mounts, dir, &daemon::service_fs_mnts(svc))
        .map_err(|e| HelperError::Failed(format!("podman storage: {e}")))
}

/// The state dir (0700) with ferry's containers.conf in it.
pub fn prepare(svc: &ServiceConfig) -> Result<Paths> {
    let p = Paths::new(&svc.name);
    daemon::mkdir_private(&p.state)?;
    daemon::write_private(&p.conf, CONTAINERS_CONF)?;
    Ok(p)
}

/// A podman command of the service: trusted binary, clean environment plus
/// ferry's containers.conf, stdin closed, killed when dropped.
pub fn command(p: &Paths, data_dir: &str, args: &[&str]) -> tokio::process::Command {
    let mut argv = global_args(p, data_dir);
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut c = crate::cmd::command("podman", &argv);
    c.env("CONTAINERS_CONF", &p.conf)
        .env("HOME", "/nonexistent")
        .current_dir("/");
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn podman(p: &Paths, data_dir: &str, args: &[&str], limit: Duration) -> Result<Out> {
    let line = format!("podman {}", args.join(" "));
    info!(target: "exec", "podman --root {data_dir} {}", args.join(" "));
    let out = match tokio::time::timeout(limit, command(p, data_dir, args).output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(HelperError::failed(format!("{line}: cannot run: {e}"))),
        Err(_) => {
            return Err(HelperError::failed(format!(
                "{line}: no answer after {} s",
                limit.as_secs()
            )))
        }
    };
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn podman_ok(p: &Paths, data_dir: &str, args: &[&str], limit: Duration) -> Result<String> {
    let o = podman(p, data_dir, args, limit).await?;
    if o.code != 0 {
        return Err(HelperError::failed(format!(
            "podman {}: exit {}: {}",
            args.join(" "),
            o.code,
            o.stderr.trim()
        )));
    }
    Ok(o.stdout)
}

/// podman names a local image `localhost/NAME:TAG`, a pulled one
/// `docker.io/library/NAME:latest`: the configured name, as written, is
/// one of these.
pub fn same_image(podman_name: &str, configured: &str) -> bool {
    let last = configured.rsplit('/').next().unwrap_or(configured);
    let tagged = if last.contains(':') || last.contains('@') {
        configured.to_string()
    } else {
        format!("{configured}:latest")
    };
    [
        configured.to_string(),
        tagged.clone(),
        format!("localhost/{tagged}"),
        format!("docker.io/{tagged}"),
        format!("docker.io/library/{tagged}"),
    ]
    .iter()
    .any(|n| n == podman_name)
}

/// `podman container inspect`'s JSON, as the facts status and start use.
/// The image name is given as configured when it names the same thing.
pub fn parse_inspect(json: &str, run_image: &str) -> std::result::Result<Observed, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("podman inspect: {e}"))?;
    let c = v
        .get(0)
        .ok_or_else(|| "podman inspect: empty answer".to_string())?;
    let st = &c["State"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let image_name = s(&c["ImageName"]);
    Ok(Observed {
        id: s(&c["Id"]),
        running: st["Running"].as_bool().unwrap_or(false),
        status: match s(&st["Status"]) {
            // podman's names for "never started" and "stopped"
            x if x == "configured" => "created".into(),
            x if x == "stopped" => "exited".into(),
            x => x,
        },
        exit_code: st["ExitCode"].as_i64().unwrap_or(0),
        pid: st["Pid"].as_i64().unwrap_or(0),
        error: s(&st["Error"]),
        finished_at: s(&st["FinishedAt"]),
        image_name: if same_image(&image_name, run_image) {
            run_image.to_string()
        } else {
            image_name
        },
        image_id: s(&c["Image"]),
    })
}

async fn observe(p: &Paths, dir: &str, name: &str, run_image: &str) -> Observation {
    match podman(p, dir, &["container", "inspect", name], CLI_TIMEOUT).await {
        Ok(o) if o.code == 0 => match parse_inspect(&o.stdout, run_image) {
            Ok(obs) => Observation::Found(obs),
            Err(e) => Observation::Error(e),
        },
        Ok(o) if o.stderr.contains("no such container") => Observation::NotFound,
        Ok(o) => Observation::Error(format!(
            "podman container inspect {name}: exit {}: {}",
            o.code,
            o.stderr.trim()
        )),
        Err(e) => Observation::Error(e.message()),
    }
}

/// The id podman has for the configured image now, if it has it.
async fn image_id(p: &Paths, dir: &str, run_image: &str) -> Option<String> {
    let o = podman(
        p,
        dir,
        &["image", "inspect", "--format", "{{.Id}}", run_image],
        CLI_TIMEOUT,
    )
    .await
    .ok()?;
    (o.code == 0).then(|| o.stdout.trim().to_string())
}

pub const STORAGE_NOT_MOUNTED: &str = "podman storage is not mounted here";

/// The container's status line, and its main process's pid when it runs
/// (what lets the status cache keep the answer while that process lives).
pub async fn status(
    svc: &ServiceConfig,
    rid: &str,
    c: &ContainerConfig,
) -> (ResourceStatus, Option<i64>) {
    let name = engine::container_name(&svc.name, rid);
    let (Ok(dir), Ok(())) = (data_dir(svc), storage_mounted(svc)) else {
        // Nothing on this node can run it: conmon would hold the fs.
        if has_processes(svc) {
            let s = ResourceStatus::new(rid, State::Warn, &c.run_image).with_comment(
                "podman processes of the service still run here, though its storage is not mounted",
            );
            return (s, None);
        }
        let s =
            ResourceStatus::new(rid, State::Down, &c.run_image).with_comment(STORAGE_NOT_MOUNTED);
        return (s, None);
    };
    let p = match prepare(svc) {
        Ok(p) => p,
        Err(e) => {
            let s = ResourceStatus::new(rid, State::Warn, &c.run_image).with_comment(e.message());
            return (s, None);
        }
    };
    let obs = observe(&p, dir, &name, &c.run_image).await;
    let id = match &obs {
        Observation::Found(o) if o.running && o.image_name == c.run_image => {
            image_id(&p, dir, &c.run_image).await
        }
        _ => None,
    };
    let pid = match &obs {
        Observation::Found(o) if o.running && o.pid > 0 => Some(o.pid),
        _ => None,
    };
    (
        engine::map_status(rid, &c.run_image, &obs, id.as_deref()),
        pid,
    )
}

/// `podman create` of the service's container: host network, catatonit as
/// PID 1 (so a shell stops on SIGTERM at once), tty and open stdin as the
/// docker one, no restart policy, the configured ulimits.
pub fn create_args(name: &str, c: &ContainerConfig) -> Vec<String> {
    let mut a: Vec<String> = [
        "create",
        "--name",
        name,
        "--network",
        "host",
        "--init",
        "-t",
        "-i",
        "--restart",
        "no",
        "--stop-timeout",
        &c.stop_timeout.to_string(),
    ]
    .map(String::from)
    .into();
    for u in &c.ulimits {
        a.push("--ulimit".into());
        a.push(u.clone());
    }
    a.push(c.run_image.clone());
    a
}

/// A start whose image the store does not have: say how to load it.
pub fn missing_image(service: &str, run_image: &str) -> String {
    format!(
        "image {run_image} is not in the service's podman storage: load it first, with \
         `ferry docker {service} -- load < image.tar` (a `podman save`/`docker save` archive), \
         `ferry docker {service} -- import - {run_image} < rootfs.tar`, \
         or `ferry docker {service} -- pull {run_image}` where a registry is reachable"
    )
}

async fn last_logs(p: &Paths, dir: &str, id: &str) -> String {
    match podman(
        p,
        dir,
        &["logs", "--tail", "10", id],
        Duration::from_secs(5),
    )
    .await
    {
        Ok(o) => {
            let text = format!("{}{}", o.stdout, o.stderr);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                "no output".into()
            } else {
                format!("last output:\n  {}", lines.join("\n  "))
            }
        }
        Err(e) => e.message(),
    }
}

/// Does podman's error say the container does not exist?
fn no_such_container(e: &HelperError) -> bool {
    e.message().contains("no such container")
}

/// Start the container: `podman start NAME` straight away (a no-op when it
/// runs), so that a relocation costs one podman call and one inspect; only
/// when it does not exist yet, create it (first run).
pub async fn start(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    let name = engine::container_name(&svc.name, rid);
    let dir = data_dir(svc)?;
    storage_mounted(svc)?;
    let p = prepare(svc)?;
    let g = format!("podman --root {dir}");
    let mut log = vec![format!("{g} start {name}")];
    let (id, created) = match podman_ok(&p, dir, &["start", &name], CLI_TIMEOUT).await {
        Ok(_) => (name.clone(), false),
        Err(e) if no_such_container(&e) => {
            log.push(format!("container {name} not found: first run"));
            if image_id(&p, dir, &c.run_image).await.is_none() {
                return Err(HelperError::failed(missing_image(&svc.name, &c.run_image)));
            }
            let args = create_args(&name, c);
            log.push(format!("{g} {}", args.join(" ")));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let id = podman_ok(&p, dir, &a, CLI_TIMEOUT)
                .await?
                .trim()
                .to_string();
            info!(container = %name, id = %id, "created");
            log.push(format!("output: {id}"));
            log.push(format!("{g} start {}", short(&id)));
            (id, true)
        }
        Err(e) => return Err(e),
    };
    let failure = match if created {
        podman_ok(&p, dir, &["start", &id], CLI_TIMEOUT)
            .await
            .map(|_| ())
    } else {
        Ok(())
    } {
        Err(e) => Some(e),
        Ok(()) => {
            log.push("wait for container up status".into());
            match engine::wait_up(&id, created, || observe(&p, dir, &id, &c.run_image)).await {
                Err(e) => Some(e),
                Ok(Waited::Up(o)) => {
                    if o.image_name != c.run_image {
                        log.push(format!(
                            "note: container {name} was created from {}, not from run_image {}",
                            o.image_name, c.run_image
                        ));
                    }
                    log.push(format!("container {name} ({}) is up", short(&o.id)));
                    None
                }
                Ok(Waited::Exited(o)) => Some(HelperError::failed(format!(
                    "container {name} ({}) stopped right after start: {}; {}",
                    short(&o.id),
                    describe(&o),
                    last_logs(&p, dir, &id).await
                ))),
            }
        }
    };
    match failure {
        None => Ok(log),
        Some(e) if created => {
            // Leave nothing behind a failed first run.
            let msg = match podman_ok(&p, dir, &["rm", "-f", &id], CLI_TIMEOUT).await {
                Ok(_) => format!(
                    "{}\n(removed container {} that this failed start had created)",
                    e.message(),
                    short(&id)
                ),
                Err(re) => format!(
                    "{}\n(and could not remove container {} that this start created: {})",
                    e.message(),
                    short(&id),
                    re.message()
                ),
            };
            Err(HelperError::Failed(msg))
        }
        Some(e) => Err(e),
    }
}

fn describe(o: &Observed) -> String {
    let s = engine::map_status("x", "", &Observation::Found(o.clone()), None);
    s.comments.join("; ")
}

/// conmon processes of the service (found by their bundle path below the
/// storage root), and podman CLIs on its storage, of this mount namespace.
fn service_processes(svc: &ServiceConfig) -> Vec<daemon::Proc> {
    let Some(dir) = svc.podman_data_dir.as_deref() else {
        return Vec::new();
    };
    let below = format!("{}/", dir.trim_end_matches('/'));
    daemon::procs()
        .into_iter()
        .filter(|x| x.is_root())
        .filter(|x| {
            (daemon::program_is(&x.argv, "conmon") && x.argv.iter().any(|a| a.starts_with(&below)))
                || (daemon::program_is(&x.argv, "podman")
                    && daemon::has_option(&x.argv, "--root", Path::new(dir)))
        })
        .collect()
}

/// Does anything of the service's podman run on this node?
pub fn has_processes(svc: &ServiceConfig) -> bool {
    !service_processes(svc).is_empty()
}

/// Marks the podman CLIs that `ferry docker` runs (in their environment),
/// so that a stop can tell them from the helper's own calls.
pub const PASSTHROUGH_ENV: &str = "FERRY_PODMAN_PASSTHROUGH";

fn is_passthrough(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0)
            .any(|v| v == format!("{PASSTHROUGH_ENV}=1").as_bytes())
    })
}

pub async fn stop(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    let name = engine::container_name(&svc.name, rid);
    let dir = data_dir(svc)?;
    if storage_mounted(svc).is_err() {
        if let Some(x) = service_processes(svc).first() {
            return Err(HelperError::Busy(format!(
                "podman storage is not mounted here, yet {} (pid {}) of the service still runs",
                x.argv.first().map(String::as_str).unwrap_or("?"),
                x.pid
            )));
        }
        return Ok(vec![format!(
            "{STORAGE_NOT_MOUNTED}: container {name} is already stopped"
        )]);
    }
    let p = prepare(svc)?;
    let t0 = Instant::now();
    // `podman stop` returns once the container is down (SIGTERM, then
    // SIGKILL after the timeout), and is a no-op on a stopped one: no
    // inspect before or after, each podman call costs 50-300 ms here.
    let t = c.stop_timeout.to_string();
    let mut log = vec![format!("podman --root {dir} stop -t {t} {name}")];
    let limit = CLI_TIMEOUT + Duration::from_secs(u64::from(c.stop_timeout));
    match podman_ok(&p, dir, &["stop", "-t", &t, &name], limit).await {
        Ok(_) => log.push(format!("container {name} is down")),
        Err(e) if no_such_container(&e) => {
            log.push(format!("container {name} not found: already stopped"))
        }
        Err(e) => return Err(e),
    }
    // This container's conmon, and any `container cleanup`, must go.
    wait_gone(svc, |x| is_conmon_of(x, &name) || is_cleanup(&x.argv)).await?;
    // Another container of the service still runs: it keeps the storage,
    // the run root and the tmp dir in use.
    if let Some(x) = service_processes(svc)
        .iter()
        .find(|x| daemon::program_is(&x.argv, "conmon"))
    {
        log.push(format!(
            "another container of the service still runs here (conmon pid {}): storage left in use",
            x.pid
        ));
        return Ok(log);
    }
    // The service's podman CLIs still running (a passthrough's `events`,
    // `logs -f`) end with its last container, as a stopping dockerd ends
    // its clients. (Only those: the helper's own short calls finish.)
    for x in service_processes(svc) {
        if daemon::program_is(&x.argv, "podman") && is_passthrough(x.pid) {
            log.push(daemon::terminate(x.pid, "podman CLI of `ferry docker`").await?);
        }
    }
    wait_gone(svc, |_| true).await?;
    log.extend(unmount_leftovers(svc, dir));
    // As after a reboot: the next start here refreshes from the database.
    for d in [&p.run_root, &p.tmp_dir] {
        if let Err(e) = std::fs::remove_dir_all(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log.push(format!("cannot remove {}: {e}", d.display()));
            }
        }
    }
    log.push(format!(
        "no podman process of the service left ({} ms)",
        t0.elapsed().as_millis()
    ));
    Ok(log)
}

/// conmon and its `container cleanup` hold the storage: wait (bounded) for
/// the service's processes that `which` picks to go.
async fn wait_gone(svc: &ServiceConfig, which: impl Fn(&daemon::Proc) -> bool) -> Result<()> {
    let deadline = Instant::now() + CONMON_EXIT_TIMEOUT;
    loop {
        let left: Vec<daemon::Proc> = service_processes(svc)
            .into_iter()
            .filter(|x| which(x))
            .collect();
        let Some(x) = left.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(HelperError::Busy(format!(
                "{} (pid {}) of the service's podman still runs {} s after the stop: it holds \
                 the storage on the shared filesystem: {}",
                x.argv.first().map(String::as_str).unwrap_or("?"),
                x.pid,
                CONMON_EXIT_TIMEOUT.as_secs(),
                crate::audit::clean_args(&x.argv)
            )));
        }
        tokio::time::sleep(POLL_EXIT).await;
    }
}

/// conmon names the container it watches with `-n NAME`.
fn is_conmon_of(x: &daemon::Proc, name: &str) -> bool {
    daemon::program_is(&x.argv, "conmon") && daemon::has_option(&x.argv, "-n", Path::new(name))
}

/// `podman … container cleanup ID`: what conmon runs once its container exited.
fn is_cleanup(argv: &[String]) -> bool {
    daemon::program_is(argv, "podman")
        && argv
            .windows(2)
            .any(|w| w[0] == "container" && w[1] == "cleanup")
}

/// What podman left mounted below its storage root (its overlay driver's
/// bind mount of `overlay/` onto itself, a container's rootfs or shm).
fn unmount_leftovers(svc: &ServiceConfig, dir: &str) -> Vec<String> {
    let Ok(mounts) = crate::fs::mounts() else {
        return Vec::new();
    };
    let mut log = Vec::new();
    for m in daemon::leftover_mounts(&mounts, dir, &daemon::service_fs_mnts(svc)) {
        match nix::mount::umount2(m.as_str(), nix::mount::MntFlags::empty()) {
            Ok(()) => log.push(format!("umount leftover {m}")),
            Err(e) => log.push(format!("cannot umount leftover {m}: {e}")),
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ulimits: &[&str]) -> ContainerConfig {
        ContainerConfig {
            runtime: ferry_core::config::ContainerRuntime::Podman,
            run_image: "local/pod:1".into(),
            stop_timeout: 10,
            ulimits: ulimits.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn paths_are_node_local_and_the_same_on_every_node() {
        let p = Paths::new("podbox");
        assert_eq!(p.run_root, Path::new("/run/ferry/podbox/podman/run"));
        assert_eq!(p.tmp_dir, Path::new("/run/ferry/podbox/podman/tmp"));
        assert_eq!(
            global_args(&p, "/srv/podbox/containers").join(" "),
            "--root /srv/podbox/containers --runroot /run/ferry/podbox/podman/run \
             --tmpdir /run/ferry/podbox/podman/tmp --storage-driver overlay \
             --cgroup-manager cgroupfs --events-backend file"
        );
        assert!(CONTAINERS_CONF.contains("lock_type = \"file\""));
    }

    #[test]
    fn create_arguments() {
        let a = create_args("podbox.container.1", &cfg(&["nofile=1024:1024"])).join(" ");
        assert_eq!(
            a,
            "create --name podbox.container.1 --network host --init -t -i --restart no \
             --stop-timeout 10 --ulimit nofile=1024:1024 local/pod:1"
        );
        assert!(!create_args("x", &cfg(&[])).contains(&"--ulimit".to_string()));
    }

    #[test]
    fn image_names() {
        assert!(same_image("localhost/local/pod:1", "local/pod:1"));
        assert!(same_image("docker.io/library/busybox:latest", "busybox"));
        assert!(same_image("local/pod:1", "local/pod:1"));
        assert!(!same_image("localhost/local/pod:2", "local/pod:1"));
        assert!(!same_image("localhost/other/local/pod:1", "local/pod:1"));
    }

    #[test]
    fn inspect_parsing() {
        let json = r#"[{"Id":"a393285e7bf01b716901b58affd68256863844206599770eff6d138d9f42b53b",
            "State":{"Status":"running","Running":true,"ExitCode":0,"Error":"",
            "FinishedAt":"0001-01-01T00:00:00Z"},
            "ImageName":"localhost/local/pod:1",
            "Image":"de3f05ab281817620c71364231d5165e4887ba0ae7a06035a2dbdcaf4eb780a6"}]"#;
        let o = parse_inspect(json, "local/pod:1").expect("parses");
        assert!(o.running);
        assert_eq!(o.image_name, "local/pod:1");
        let s = engine::map_status(
            "container#1",
            "local/pod:1",
            &Observation::Found(o.clone()),
            Some(&o.image_id),
        );
        assert_eq!(
            (s.state.as_str(), s.label.as_str()),
            ("up", "a393285e7bf0@local/pod:1")
        );
        let s = engine::map_status(
            "container#1",
            "local/pod:1",
            &Observation::Found(o),
            Some("other"),
        );
        assert_eq!(s.state, "warn");
        let stopped = json
            .replace(
                "\"running\",\"Running\":true,\"ExitCode\":0",
                "\"stopped\",\"Running\":false,\"ExitCode\":143",
            )
            .replace("0001-01-01T00:00:00Z", "2026-12-02T00:37:01.091502316Z");
        let o = parse_inspect(&stopped, "local/pod:1").expect("parses");
        assert_eq!(describe(&o), "exited (143) at 2026-12-02T00:37:01Z");
        assert!(parse_inspect("[]", "x").is_err());
        assert!(parse_inspect("garbage", "x").is_err());
    }

    #[test]
    fn conmon_and_cleanup_are_told_apart() {
        let v = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
        assert!(is_cleanup(&v(&[
            "/usr/bin/podman",
            "--root",
            "/r",
            "container",
            "cleanup",
            "abc"
        ])));
        assert!(!is_cleanup(&v(&["/usr/bin/podman", "--root", "/r", "ps"])));
        assert!(!is_cleanup(&v(&["conmon", "container", "cleanup"])));
        let conmon = |argv: Vec<String>| daemon::Proc::for_test(argv);
        let c1 = conmon(v(&[
            "/usr/bin/conmon",
            "--api-version",
            "1",
            "-c",
            "abc",
            "-n",
            "p.container.1",
            "-b",
            "/r/x",
        ]));
        assert!(is_conmon_of(&c1, "p.container.1"));
        assert!(!is_conmon_of(&c1, "p.container.2"));
    }

    #[test]
    fn passthrough_is_told_apart() {
        // this test process has no marker
        assert!(!is_passthrough(std::process::id() as i32));
    }
}
