//! The service's private containerd + dockerd.
//!
//! State that must not follow the service (sockets, pidfiles, exec-root,
//! containerd's root and state, logs) lives node-local under
//! `/var/lib/ferry/<svc>/`; dockerd's data root lives on the service's
//! shared filesystem, so the same containers come up on the other node.
//! containerd keeps nothing there that must move: dockerd 20.10 holds the
//! images and containers in its own data root and asks containerd only to
//! run them (it recreates a container record containerd lacks, and replaces
//! a stale one). So containerd can start before the shared filesystem is
//! mounted: [`prepare`], while the start brings up the storage.
//!
//! Processes are found by their command line (`--pidfile <ours>`,
//! `--config <ours>`, `-address <our containerd.sock>`) among the processes
//! of this mount namespace, so a helper restart loses nothing and the same
//! service run by another lab node (same paths, other mount namespace, same
//! pid namespace) is never touched. Liveness comes from `/proc/PID/stat`,
//! never `kill -0`: an orphan that PID 1 has not reaped yet is a zombie.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferry_core::config::{path_within, Kind, ResourceConfig, ServiceConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::error::{HelperError, Result};
use crate::fs::MountEntry;

/// Node-local state of every service: `/var/lib/ferry/<svc>/`.
pub const STATE_BASE: &str = "/var/lib/ferry";
/// The host's own daemon, for services without `docker_data_dir`.
pub const HOST_SOCKET: &str = "/var/run/docker.sock";
/// PATH for the daemons and the docker CLI: root-owned directories only.
pub const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `sun_path` is 108 bytes, NUL included.
const SUN_PATH_MAX: usize = 107;
const POLL_DAEMON: Duration = Duration::from_millis(10);
const POLL_CONTAINERD: Duration = Duration::from_millis(5);
const POLL_EXIT: Duration = Duration::from_millis(3);
const CONTAINERD_START_TIMEOUT: Duration = Duration::from_secs(10);
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 12;
const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Every path of one service's daemon pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state: PathBuf,
    pub docker_sock: PathBuf,
    pub docker_pid: PathBuf,
    pub containerd_sock: PathBuf,
    pub containerd_ttrpc: PathBuf,
    pub containerd_pid: PathBuf,
    pub containerd_toml: PathBuf,
    pub containerd_root: PathBuf,
    pub containerd_state: PathBuf,
    pub exec_root: PathBuf,
    pub daemon_json: PathBuf,
    pub dockerd_log: PathBuf,
    pub containerd_log: PathBuf,
    /// An empty DOCKER_CONFIG for the passthrough CLI: no user's config or
    /// credential helper is ever read.
    pub docker_config: PathBuf,
}

impl Paths {
    pub fn new(service: &str) -> Paths {
        let state = Path::new(STATE_BASE).join(service);
        let containerd_sock = state.join("containerd.sock");
        Paths {
            docker_sock: state.join("docker.sock"),
            docker_pid: state.join("docker.pid"),
            // containerd's own default would be the grpc address + ".ttrpc";
            // spelt out so the length check sees it.
            containerd_ttrpc: state.join("containerd.sock.ttrpc"),
            containerd_sock,
            containerd_pid: state.join("containerd.pid"),
            containerd_toml: state.join("containerd.toml"),
            containerd_root: state.join("cr"),
            containerd_state: state.join("cs"),
            exec_root: state.join("x"),
            daemon_json: state.join("daemon.json"),
            dockerd_log: state.join("dockerd.log"),
            containerd_log: state.join("containerd.log"),
            docker_config: state.join("docker-config"),
            state,
        }
    }

    /// The unix sockets of the daemon pair, each of which must fit
    /// `sun_path`. The longest is dockerd's own libnetwork socket,
    /// `<exec-root>/libnetwork/<12 hex>.sock`: too long, and dockerd dies at
    /// start with "bind: invalid argument".
    fn sockets(&self) -> [PathBuf; 4] {
        [
            self.docker_sock.clone(),
            self.containerd_sock.clone(),
            self.containerd_ttrpc.clone(),
            self.exec_root.join("libnetwork").join("0123456789ab.sock"),
        ]
    }
}

/// The socket of the daemon the service's containers run on.
pub fn socket_path(svc: &ServiceConfig) -> PathBuf {
    match svc.docker_data_dir {
        Some(_) => Paths::new(&svc.name).docker_sock,
        None => PathBuf::from(HOST_SOCKET),
    }
}

/// `unix://<socket>`, as `docker -H` and log lines spell it.
pub fn docker_host(svc: &ServiceConfig) -> String {
    format!("unix://{}", socket_path(svc).display())
}

/// The error of an action that needs the daemon while it does not answer.
pub fn not_running(svc: &ServiceConfig) -> HelperError {
    HelperError::DaemonNotRunning(match svc.docker_data_dir {
        Some(_) => format!(
            "docker daemon of service {} is not running: start it first",
            svc.name
        ),
        None => format!("the host's docker daemon does not answer on {HOST_SOCKET}"),
    })
}

/// Does the service's docker daemon answer `/_ping`?
pub async fn is_running(svc: &ServiceConfig) -> bool {
    ping(&socket_path(svc)).await
}

/// `GET /_ping` over the unix socket, by hand: cheaper than a client, and
/// called every 10 ms while a daemon starts.
pub async fn ping(sock: &Path) -> bool {
    let attempt = async {
        let mut s = UnixStream::connect(sock).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        // HTTP/1.0 without keep-alive: the daemon closes after the answer.
        let mut buf = Vec::with_capacity(512);
        s.read_to_end(&mut buf).await.ok()?;
        Some(ping_ok(&buf))
    };
    matches!(
        tokio::time::timeout(PING_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

fn ping_ok(resp: &[u8]) -> bool {
    let status = resp.split(|&b| b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status);
    let mut f = status.split_whitespace();
    matches!(f.next(), Some(v) if v.starts_with("HTTP/")) && f.next() == Some("200")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// containerd's config for one service. Everything that would listen on TCP
/// or land in a host-global path is disabled or moved under the state dir:
/// CRI (a streaming server on a TCP port, CNI under /etc and /opt), the
/// `opt` plugin (/opt/containerd), the debug and metrics listeners. The v1
/// runtime must stay (1.6's tasks service needs it), its runc root
/// (/run/containerd/runc by default) moved under the state dir. Snapshotters
/// other than overlayfs and native are dropped: dockerd 20.10 keeps images
/// in its own graphdriver. Left host-global by containerd 1.6 itself: the
/// shims' sockets, `/run/containerd/s/<sha256 of address+namespace+id>`
/// (distinct per service, and no `containerd.sock` that a dockerd would
/// pick up).
pub fn containerd_config(service: &str, p: &Paths) -> String {
    format!(
        "# Written by ferry-helper for service {service} at each daemon start: do not edit.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         oom_score = 0\n\
         disabled_plugins = [\n  \
           \"io.containerd.grpc.v1.cri\",\n  \
           \"io.containerd.internal.v1.opt\",\n  \
           \"io.containerd.snapshotter.v1.aufs\",\n  \
           \"io.containerd.snapshotter.v1.btrfs\",\n  \
           \"io.containerd.snapshotter.v1.devmapper\",\n  \
           \"io.containerd.snapshotter.v1.zfs\",\n  \
           \"io.containerd.tracing.processor.v1.otlp\",\n  \
           \"io.containerd.internal.v1.tracing\",\n\
         ]\n\
         \n\
         [grpc]\n  \
           address = {grpc}\n  \
           tcp_address = \"\"\n  \
           uid = 0\n  \
           gid = 0\n\
         \n\
         [ttrpc]\n  \
           address = {ttrpc}\n  \
           uid = 0\n  \
           gid = 0\n\
         \n\
         [debug]\n  \
           address = \"\"\n\
         \n\
         [metrics]\n  \
           address = \"\"\n\
         \n\
         [plugins.\"io.containerd.monitor.v1.cgroups\"]\n  \
           no_prometheus = true\n\
         \n\
         [plugins.\"io.containerd.runtime.v1.linux\"]\n  \
           runtime_root = {runc_v1}\n",
        root = toml_str(&p.containerd_root.to_string_lossy()),
        state = toml_str(&p.containerd_state.to_string_lossy()),
        grpc = toml_str(&p.containerd_sock.to_string_lossy()),
        ttrpc = toml_str(&p.containerd_ttrpc.to_string_lossy()),
        runc_v1 = toml_str(&p.containerd_state.join("runc").to_string_lossy()),
    )
}

pub fn containerd_args(p: &Paths) -> Vec<String> {
    vec![
        "--config".into(),
        p.containerd_toml.to_string_lossy().into_owned(),
    ]
}

/// dockerd's arguments: node-local sockets and state, data root on the
/// shared fs, our containerd, our (empty) config file so the host's
/// /etc/docker/daemon.json never applies, and the host network only: no
/// bridge, no NAT, no firewall rules, so no address but the service's ever
/// appears. The config's `docker_daemon_args` come last.
pub fn dockerd_args(p: &Paths, data_dir: &str, extra: &[String]) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = vec![
        "-H".into(),
        format!("unix://{}", p.docker_sock.display()),
        "--data-root".into(),
        data_dir.to_string(),
        "--exec-root".into(),
        s(&p.exec_root),
        "--pidfile".into(),
        s(&p.docker_pid),
        "--containerd".into(),
        s(&p.containerd_sock),
        "--config-file".into(),
        s(&p.daemon_json),
        "--bridge=none".into(),
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--ip-masq=false".into(),
    ];
    a.extend(extra.iter().cloned());
    a
}

fn check_socket_paths(p: &Paths) -> Result<()> {
    for s in p.sockets() {
        let len = s.as_os_str().len();
        if len > SUN_PATH_MAX {
            return Err(HelperError::InvalidConfig(format!(
                "socket path {} of the private docker daemon would be {len} bytes long, more than a unix socket allows ({SUN_PATH_MAX}): use a service name of at most {} characters",
                s.display(),
                max_service_name(p, &s)
            )));
        }
    }
    Ok(())
}

fn max_service_name(p: &Paths, socket: &Path) -> usize {
    let name_len = p.state.file_name().map(|n| n.len()).unwrap_or(0);
    (SUN_PATH_MAX + name_len).saturating_sub(socket.as_os_str().len())
}

/// The data root must sit on a mounted filesystem, not on whatever directory
/// the root fs has where the service's fs is not mounted yet: dockerd would
/// happily create a fresh, empty data root there. `fs_mnts` are the
/// mountpoints of the service's fs resources; the deepest one holding the
/// data root must be mounted.
pub fn check_data_root(
    mounts: &[MountEntry],
    data_dir: &str,
    fs_mnts: &[&str],
) -> std::result::Result<(), String> {
    let not_mounted = |what: &str| {
        format!("data root {data_dir} is not on a mounted filesystem ({what}): start the fs first")
    };
    if let Some(fs) = fs_mnts
        .iter()
        .filter(|m| path_within(data_dir, m))
        .max_by_key(|m| Path::new(m).components().count())
    {
        if !mounts.iter().any(|m| m.mountpoint == *fs) {
            return Err(not_mounted(&format!("{fs} is not mounted")));
        }
        return Ok(());
    }
    let holder = mounts
        .iter()
        .filter(|m| path_within(data_dir, &m.mountpoint))
        .max_by_key(|m| Path::new(&m.mountpoint).components().count());
    match holder {
        Some(m) if m.mountpoint != "/" => Ok(()),
        _ => Err(not_mounted("it is on the root filesystem")),
    }
}

pub(super) fn service_fs_mnts(svc: &ServiceConfig) -> Vec<&str> {
    svc.resources
        .iter()
        .filter(|r| r.kind() == Kind::Fs)
        .filter_map(|r| match &r.config {
            ResourceConfig::Fs(f) => Some(f.mnt.as_str()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Processes

/// One process of this mount namespace, as /proc shows it.
#[derive(Debug, Clone)]
pub(super) struct Proc {
    pub(super) pid: i32,
    ppid: i32,
    /// Owner of /proc/PID: the process's user.
    uid: u32,
    pub(super) argv: Vec<String>,
}

impl Proc {
    /// Only root's processes can be the service's daemons: anyone can start
    /// a process named dockerd with our pidfile in its arguments, and the
    /// helper would then wait on it (or signal it) instead of starting its own.
    pub(super) fn is_root(&self) -> bool {
        self.uid == 0
    }

    #[cfg(test)]
    pub(super) fn for_test(argv: Vec<String>) -> Proc {
        Proc {
            pid: 1,
            ppid: 0,
            uid: 0,
            argv,
        }
    }
}

/// State letter and parent pid from `/proc/PID/stat`. The command name may
/// hold spaces and parentheses: the fields start after the last ')'.
fn parse_stat(text: &str) -> Option<(char, i32)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn stat(pid: i32) -> Option<(char, i32)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Running, sleeping, stopped…: anything but gone, zombie or dead.
pub(super) fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

fn mount_ns(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn argv(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let v: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Live processes; with `our_ns`, only those of our mount namespace.
fn scan(our_ns: bool) -> Vec<Proc> {
    let ours = if our_ns {
        match mount_ns("self") {
            Some(ns) => Some(ns),
            None => return Vec::new(),
        }
    } else {
        None
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        if let Some(ours) = &ours {
            if mount_ns(&pid.to_string())? != *ours {
                return None;
            }
        }
        let (state, ppid) = stat(pid)?;
        if state == 'Z' || state == 'X' {
            return None;
        }
        let uid =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!("/proc/{pid}")).ok()?);
        Some(Proc {
            pid,
            ppid,
            uid,
            argv: argv(pid).unwrap_or_default(),
        })
    })
    .collect()
}

/// Live processes of our mount namespace: another lab node runs the same
/// service with the same paths in its own.
pub(super) fn procs() -> Vec<Proc> {
    scan(true)
}

pub(super) fn program_is(argv: &[String], name: &str) -> bool {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == name)
}

/// `flag value` or `flag=value` among the arguments.
pub(super) fn has_option(argv: &[String], flag: &str, value: &Path) -> bool {
    let value = value.to_string_lossy();
    argv.windows(2)
        .any(|w| w[0] == flag && w[1] == value.as_ref())
        || argv
            .iter()
            .any(|a| a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) == Some(value.as_ref()))
}

fn is_dockerd(argv: &[String], p: &Paths) -> bool {
    program_is(argv, "dockerd") && has_option(argv, "--pidfile", &p.docker_pid)
}

fn is_containerd(argv: &[String], p: &Paths) -> bool {
    program_is(argv, "containerd") && has_option(argv, "--config", &p.containerd_toml)
}

fn is_shim(argv: &[String], p: &Paths) -> bool {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
        && has_option(argv, "-address", &p.containerd_sock)
}

async fn wait_gone(pid: i32, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EXIT).await;
    }
}

/// SIGTERM, wait (bounded), SIGKILL, wait. Returns what was done.
pub(super) async fn terminate(pid: i32, what: &str) -> Result<String> {
    let t0 = Instant::now();
    if kill(Pid::from_raw(pid), Signal::SIGTERM).is_err() || wait_gone(pid, EXIT_TIMEOUT).await {
        return Ok(format!(
            "{what} (pid {pid}) exited in {} ms",
            t0.elapsed().as_millis()
        ));
    }
    warn!(
        pid,
        "{what} still runs {} s after SIGTERM: SIGKILL",
        EXIT_TIMEOUT.as_secs()
    );
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    if wait_gone(pid, KILL_TIMEOUT).await {
        Ok(format!(
            "{what} (pid {pid}) ignored SIGTERM for {} s: killed",
            EXIT_TIMEOUT.as_secs()
        ))
    } else {
        Err(HelperError::Busy(format!(
            "{what} (pid {pid}) survives SIGKILL (uninterruptible I/O?)"
        )))
    }
}

/// A leftover shim keeps the container it supervised alive, and both keep
/// the data root busy. Its children are the containers' first processes
/// (in their own mount namespaces); killing a pid namespace's init kills
/// everything in that namespace.
async fn kill_shim(shim: &Proc) -> Vec<String> {
    let mut log = Vec::new();
    let children: Vec<Proc> = scan(false)
        .into_iter()
        .filter(|c| c.ppid == shim.pid)
        .collect();
    for child in &children {
        let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        log.push(format!(
            "kill leftover container process {} ({})",
            child.pid,
            child.argv.join(" ")
        ));
    }
    for child in &children {
        wait_gone(child.pid, KILL_TIMEOUT).await;
    }
    let _ = kill(Pid::from_raw(shim.pid), Signal::SIGKILL);
    wait_gone(shim.pid, KILL_TIMEOUT).await;
    log.push(format!(
        "kill leftover {} (pid {})",
        shim.argv.join(" "),
        shim.pid
    ));
    log
}

/// Mounts a dockerd that died without cleaning up leaves below the data
/// root (its bind mount of the data root, the containers' overlays): they
/// would keep the service's fs busy. A data root that is itself a
/// configured mountpoint is the fs, not a leftover.
fn unmount_leftovers(svc: &ServiceConfig, data_dir: &str) -> Vec<String> {
    let Ok(mounts) = crate::fs::mounts() else {
        return Vec::new();
    };
    let fs_mnts = service_fs_mnts(svc);
    let mut log = Vec::new();
    // dockerd also bind-mounts its network namespace under its exec root
    // (`x/netns/default`), node-local, which it leaves behind at exit.
    let exec_root = Paths::new(&svc.name).exec_root.display().to_string();
    let mut leftovers = leftover_mounts(&mounts, data_dir, &fs_mnts);
    leftovers.extend(leftover_mounts(&mounts, &exec_root, &[]));
    for m in leftovers {
        match nix::mount::umount2(m.as_str(), nix::mount::MntFlags::empty()) {
            Ok(()) => log.push(format!("umount leftover {m}")),
            Err(e) => log.push(format!("cannot umount leftover {m}: {e}")),
        }
    }
    log
}

/// Mountpoints at or below the data root, topmost first, the service's own
/// fs mountpoints excepted.
pub(super) fn leftover_mounts(
    mounts: &[MountEntry],
    data_dir: &str,
    fs_mnts: &[&str],
) -> Vec<String> {
    mounts
        .iter()
        .rev()
        .filter(|m| path_within(&m.mountpoint, data_dir))
        .filter(|m| !fs_mnts.contains(&m.mountpoint.as_str()))
        .map(|m| m.mountpoint.clone())
        .collect()
}

/// A detached daemon: its own session, so it outlives the helper; its exit
/// reaped by a task of ours, so no zombie stays behind.
struct Spawned {
    pid: i32,
    exited: oneshot::Receiver<ExitStatus>,
}

fn spawn_detached(program: &str, args: &[String], log: &Path) -> Result<Spawned> {
    rotate(log);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| HelperError::failed(format!("cannot open {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| HelperError::failed(format!("{}: {e}", log.display())))?;
    let mut cmd = tokio::process::Command::new(crate::cmd::trusted_program(program, PATH_ENV)?);
    cmd.arg0(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH_ENV)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    // SAFETY: setsid and close_range are async-signal-safe syscalls. The new
    // session detaches the daemon from the helper's process group. Marking
    // inherited descriptors close-on-exec keeps a caller's fd (from a
    // concurrent passthrough call) from staying open in a daemon forever.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| HelperError::failed(format!("cannot run {program}: {e}")))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| HelperError::failed(format!("{program} exited at once")))?;
    let (tx, exited) = oneshot::channel();
    let name = program.to_string();
    tokio::spawn(async move {
        match child.wait().await {
            Ok(st) => {
                info!(pid, "{name} exited: {st}");
                let _ = tx.send(st);
            }
            Err(e) => warn!(pid, "{name}: wait: {e}"),
        }
    });
    Ok(Spawned { pid, exited })
}

/// Keep one previous log (`<log>.1`) once a log passes LOG_ROTATE_BYTES:
/// the daemons append to it at every start.
fn rotate(log: &Path) {
    if file_len(log) > LOG_ROTATE_BYTES {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        if let Err(e) = std::fs::rename(log, &old) {
            warn!("cannot rotate {}: {e}", log.display());
        }
    }
}

fn describe_exit(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The last lines a log got since `from`, for an error message.
fn log_tail(p: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let from = if file_len(p).saturating_sub(from) > 64 * 1024 {
            file_len(p) - 64 * 1024
        } else {
            from
        };
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            text = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail: Vec<String> = lines[start..]
        .iter()
        .map(|l| l.chars().take(400).collect())
        .collect();
    if tail.is_empty() {
        format!("{}: (empty)", p.display())
    } else {
        format!("last lines of {}:\n  {}", p.display(), tail.join("\n  "))
    }
}

fn remove_file(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}", p.display()),
    }
}

pub(super) fn mkdir_private(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| HelperError::failed(format!("cannot create {}: {e}", dir.display())))?;
    // An existing directory keeps whatever mode it had: fix it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| HelperError::failed(format!("cannot chmod {}: {e}", dir.display())))
}

pub(super) fn write_private(p: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| HelperError::failed(format!("cannot write {}: {e}", p.display())))
}

/// The node-local state dir (0700) and the empty docker CLI config in it.
pub fn prepare_state_dir(svc: &ServiceConfig) -> Result<Paths> {
    let p = Paths::new(&svc.name);
    mkdir_private(&p.state)?;
    mkdir_private(&p.docker_config)?;
    Ok(p)
}

// ---------------------------------------------------------------------------
// Start

/// Start containerd ahead of dockerd, and do not wait for it: it needs
/// nothing on shared storage, so it boots while the start mounts the
/// filesystems; [`start`] then waits for it and adds dockerd.
pub async fn prepare(svc: &ServiceConfig) -> Result<Vec<String>> {
    if svc.docker_data_dir.is_none() {
        return Ok(vec![
            "using the host's docker daemon: nothing to prepare".into()
        ]);
    }
    let p = Paths::new(&svc.name);
    check_socket_paths(&p)?;
    if ping(&p.docker_sock).await {
        return Ok(vec!["docker daemon is already running".into()]);
    }
    if let Some(c) = procs()
        .iter()
        .find(|x| x.is_root() && is_containerd(&x.argv, &p))
    {
        return Ok(vec![format!(
            "containerd (pid {}) is already running",
            c.pid
        )]);
    }
    prepare_state_dir(svc)?;
    mkdir_private(&p.containerd_state)?;
    let mut log = Vec::new();
    let spawned = spawn_containerd(svc, &p, &mut log)?;
    log.push(format!(
        "containerd (pid {}) boots while the storage comes up",
        spawned.child.pid
    ));
    Ok(log)
}

pub async fn start(svc: &ServiceConfig) -> Result<Vec<String>> {
    let Some(data_dir) = svc.docker_data_dir.as_deref() else {
        let mut log = vec!["using the host's docker daemon".to_string()];
        if !ping(Path::new(HOST_SOCKET)).await {
            log.push(format!(
                "warning: the host's docker daemon does not answer on {HOST_SOCKET}"
            ));
        }
        return Ok(log);
    };
    let p = Paths::new(&svc.name);
    check_socket_paths(&p)?;
    let mounts = crate::fs::mounts()?;
    check_data_root(&mounts, data_dir, &service_fs_mnts(svc)).map_err(HelperError::Failed)?;

    if ping(&p.docker_sock).await {
        return Ok(vec!["docker daemon is already running".into()]);
    }
    prepare_state_dir(svc)?;
    mkdir_private(&p.exec_root)?;
    mkdir_private(&p.containerd_state)?;

    let all = procs();
    // A dockerd of ours that does not answer: let it finish starting, but do
    // not start a second one beside it.
    if let Some(d) = all.iter().find(|x| x.is_root() && is_dockerd(&x.argv, &p)) {
        let deadline = Instant::now() + DOCKERD_START_TIMEOUT;
        while Instant::now() < deadline && alive(d.pid) {
            if ping(&p.docker_sock).await {
                return Ok(vec![format!(
                    "docker daemon (pid {}) is already running",
                    d.pid
                )]);
            }
            tokio::time::sleep(POLL_DAEMON).await;
        }
        if alive(d.pid) {
            return Err(HelperError::Busy(format!(
                "dockerd (pid {}) runs but does not answer on {}: stop the daemon first",
                d.pid,
                p.docker_sock.display()
            )));
        }
    }

    let mut log = vec!["starting docker daemon".to_string()];
    // Stale files of a dead daemon: dockerd refuses a pidfile whose pid is
    // alive, and the pid may have been reused by anything since.
    for f in [&p.docker_pid, &p.docker_sock] {
        if f.exists() {
            remove_file(f);
            log.push(format!("remove stale {}", f.display()));
        }
    }

    let t0 = Instant::now();
    let running = all
        .iter()
        .find(|x| x.is_root() && is_containerd(&x.argv, &p));
    // One that runs may still be booting (started by `prepare`): give it
    // the time a fresh one gets before calling it deaf.
    let answers = match running {
        Some(c) => wait_containerd(&p, c.pid, None).await.is_ok(),
        None => false,
    };
    let started_containerd = match running {
        Some(c) if answers => {
            log.push(format!(
                "containerd (pid {}) answers after {} ms",
                c.pid,
                t0.elapsed().as_millis()
            ));
            None
        }
        _ => {
            if let Some(c) = running.filter(|c| alive(c.pid)) {
                // Alive but deaf: it would hold the state dir's lock.
                log.push(terminate(c.pid, "unresponsive containerd").await?);
            }
            for f in [&p.containerd_sock, &p.containerd_ttrpc, &p.containerd_pid] {
                remove_file(f);
            }
            let mut spawned = spawn_containerd(svc, &p, &mut log)?;
            let pid = spawned.child.pid;
            wait_containerd(&p, pid, Some(&mut spawned)).await?;
            Some(pid)
        }
    };

    match start_dockerd(svc, &p, data_dir, &mut log).await {
        Ok(()) => {
            log.push(format!(
                "docker daemon answers on unix://{} after {} ms",
                p.docker_sock.display(),
                t0.elapsed().as_millis()
            ));
            Ok(log)
        }
        Err(e) => {
            // Roll back what this start did: the containerd it started.
            if let Some(pid) = started_containerd {
                let _ = terminate(pid, "containerd").await;
                for f in [&p.containerd_sock, &p.containerd_ttrpc, &p.containerd_pid] {
                    remove_file(f);
                }
            }
            Err(e)
        }
    }
}

/// A containerd just spawned, and where its log stood before.
struct SpawnedContainerd {
    child: Spawned,
    log_offset: u64,
}

fn spawn_containerd(
    svc: &ServiceConfig,
    p: &Paths,
    log: &mut Vec<String>,
) -> Result<SpawnedContainerd> {
    mkdir_private(&p.containerd_root)?;
    write_private(&p.containerd_toml, &containerd_config(&svc.name, p))?;
    let args = containerd_args(p);
    let log_offset = file_len(&p.containerd_log);
    let line = crate::cmd::display(
        "containerd",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    info!(target: "exec", "{line}");
    let child = spawn_detached("containerd", &args, &p.containerd_log)?;
    if let Err(e) = write_private(&p.containerd_pid, &format!("{}\n", child.pid)) {
        warn!("{}", e.message());
    }
    log.push(format!("{line} (pid {})", child.pid));
    Ok(SpawnedContainerd { child, log_offset })
}

/// Until containerd `pid` listens, or CONTAINERD_START_TIMEOUT. One this
/// call spawned (`ours`) that fails is cleaned up, and the error has its
/// log's tail; the caller decides what to do with one found running.
async fn wait_containerd(
    p: &Paths,
    pid: i32,
    mut ours: Option<&mut SpawnedContainerd>,
) -> Result<()> {
    let deadline = Instant::now() + CONTAINERD_START_TIMEOUT;
    let log_from = ours.as_ref().map(|s| s.log_offset);
    let tail = |why: String| match log_from {
        Some(from) => format!("{why}; {}", log_tail(&p.containerd_log, from)),
        None => why,
    };
    loop {
        if UnixStream::connect(&p.containerd_sock).await.is_ok() {
            return Ok(());
        }
        let gone = match ours.as_deref_mut() {
            Some(s) => s.child.exited.try_recv().ok().map(|st| describe_exit(&st)),
            None => (!alive(pid)).then(|| "gone".to_string()),
        };
        if let Some(how) = gone {
            if ours.is_some() {
                remove_file(&p.containerd_pid);
            }
            return Err(HelperError::failed(tail(format!(
                "containerd exited at start ({how})"
            ))));
        }
        if Instant::now() >= deadline {
            if ours.is_some() {
                let _ = terminate(pid, "containerd").await;
                remove_file(&p.containerd_pid);
            }
            return Err(HelperError::failed(tail(format!(
                "containerd does not listen on {} after {} s",
                p.containerd_sock.display(),
                CONTAINERD_START_TIMEOUT.as_secs()
            ))));
        }
        tokio::time::sleep(POLL_CONTAINERD).await;
    }
}

async fn start_dockerd(
    svc: &ServiceConfig,
    p: &Paths,
    data_dir: &str,
    log: &mut Vec<String>,
) -> Result<()> {
    // Our own (empty) daemon.json: the host's /etc/docker/daemon.json (a
    // "hosts" key, a bridge address…) must not apply to a service daemon.
    write_private(&p.daemon_json, "{}\n")?;
    let args = dockerd_args(p, data_dir, &svc.docker_daemon_args);
    let offset = file_len(&p.dockerd_log);
    let line = crate::cmd::display(
        "dockerd",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    info!(target: "exec", "{line}");
    let mut child = spawn_detached("dockerd", &args, &p.dockerd_log)?;
    log.push(format!("{line} (pid {})", child.pid));
    let deadline = Instant::now() + DOCKERD_START_TIMEOUT;
    loop {
        if ping(&p.docker_sock).await {
            return Ok(());
        }
        if let Ok(st) = child.exited.try_recv() {
            remove_file(&p.docker_pid);
            remove_file(&p.docker_sock);
            return Err(HelperError::failed(format!(
                "dockerd exited at start ({}); {}",
                describe_exit(&st),
                log_tail(&p.dockerd_log, offset)
            )));
        }
        if Instant::now() >= deadline {
            let _ = terminate(child.pid, "dockerd").await;
            remove_file(&p.docker_pid);
            remove_file(&p.docker_sock);
            return Err(HelperError::failed(format!(
                "dockerd does not answer on {} after {} s; {}",
                p.docker_sock.display(),
                DOCKERD_START_TIMEOUT.as_secs(),
                log_tail(&p.dockerd_log, offset)
            )));
        }
        tokio::time::sleep(POLL_DAEMON).await;
    }
}

// ---------------------------------------------------------------------------
// Stop

/// Names of the containers the daemon still runs.
async fn running_containers(p: &Paths) -> Result<Vec<String>> {
    let docker = bollard::Docker::connect_with_unix(
        &p.docker_sock.to_string_lossy(),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| HelperError::failed(format!("docker daemon: {e}")))?
    .negotiate_version()
    .await
    .map_err(|e| HelperError::failed(format!("docker daemon: {e}")))?;
    let list = docker
        .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
        .await
        .map_err(|e| HelperError::failed(format!("docker daemon: list containers: {e}")))?;
    Ok(list
        .into_iter()
        .map(|c| {
            c.names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id.map(|i| i.chars().take(12).collect()))
                .unwrap_or_default()
        })
        .collect())
}

/// Does any process of the service's private daemon pair (dockerd,
/// containerd, a shim) still run on this node? Such a process keeps the
/// data root, on the shared filesystem, in use.
pub fn has_processes(svc: &ServiceConfig) -> bool {
    if svc.docker_data_dir.is_none() {
        return false;
    }
    let p = Paths::new(&svc.name);
    procs().iter().any(|x| {
        x.is_root()
            && (is_dockerd(&x.argv, &p) || is_containerd(&x.argv, &p) || is_shim(&x.argv, &p))
    })
}

pub async fn stop(svc: &ServiceConfig) -> Result<Vec<String>> {
    let Some(data_dir) = svc.docker_data_dir.as_deref() else {
        return Ok(vec!["using the host's docker daemon: left running".into()]);
    };
    let p = Paths::new(&svc.name);
    let t0 = Instant::now();
    let answers = ping(&p.docker_sock).await;
    if answers {
        let running = running_containers(&p).await?;
        if !running.is_empty() {
            return Err(HelperError::Busy(format!(
                "docker daemon still runs containers: {}",
                running.join(", ")
            )));
        }
    }
    let all = procs();
    let dockerds: Vec<&Proc> = all
        .iter()
        .filter(|x| x.is_root() && is_dockerd(&x.argv, &p))
        .collect();
    let containerds: Vec<&Proc> = all
        .iter()
        .filter(|x| x.is_root() && is_containerd(&x.argv, &p))
        .collect();
    let shims: Vec<&Proc> = all
        .iter()
        .filter(|x| x.is_root() && is_shim(&x.argv, &p))
        .collect();
    if !answers && dockerds.is_empty() && containerds.is_empty() && shims.is_empty() {
        remove_leftover_files(&p);
        let mut log = vec!["docker daemon is already stopped".to_string()];
        log.extend(unmount_leftovers(svc, data_dir));
        return Ok(log);
    }

    let mut log = Vec::new();
    if answers {
        log.push("no more container handled by docker daemon. shut it down".into());
    } else if dockerds.is_empty() && shims.is_empty() {
        // Started ahead of dockerd (`prepare`) by a start that went no further.
        log.push("containerd runs without dockerd: stop it".into());
    } else {
        log.push("docker daemon does not answer: clean up what is left of it".into());
    }
    for d in &dockerds {
        log.push(terminate(d.pid, "dockerd").await?);
    }
    for c in &containerds {
        log.push(terminate(c.pid, "containerd").await?);
    }
    // Shims normally exit with their container; what is left after
    // containerd is gone belongs to a daemon that was killed. No new one can
    // appear with dockerd and containerd gone: the scan above saw them all.
    // (Its pid still a shim of ours: never kill a pid reused meanwhile.)
    for s in shims
        .iter()
        .filter(|s| alive(s.pid) && argv(s.pid).is_some_and(|a| is_shim(&a, &p)))
    {
        log.extend(kill_shim(s).await);
    }
    remove_leftover_files(&p);
    log.extend(unmount_leftovers(svc, data_dir));
    log.push(format!(
        "docker daemon stopped in {} ms",
        t0.elapsed().as_millis()
    ));
    Ok(log)
}

fn remove_leftover_files(p: &Paths) {
    for f in [
        &p.docker_sock,
        &p.docker_pid,
        &p.containerd_sock,
        &p.containerd_ttrpc,
        &p.containerd_pid,
    ] {
        remove_file(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(mp: &str) -> MountEntry {
        MountEntry {
            devno: (7, 1),
            mountpoint: mp.into(),
            read_write: true,
        }
    }

    #[test]
    fn paths_are_node_local_and_short() {
        let p = Paths::new("busybox");
        assert_eq!(
            p.docker_sock,
            Path::new("/var/lib/ferry/busybox/docker.sock")
        );
        assert_eq!(p.exec_root, Path::new("/var/lib/ferry/busybox/x"));
        assert!(check_socket_paths(&p).is_ok());
        // dockerd's libnetwork socket limits service names to 61 characters.
        assert!(check_socket_paths(&Paths::new(&"s".repeat(61))).is_ok());
        let e = check_socket_paths(&Paths::new(&"s".repeat(62))).unwrap_err();
        let m = e.message();
        assert!(m.contains("more than a unix socket allows"), "{m}");
        assert!(m.contains("at most 61 characters"), "{m}");
    }

    #[test]
    fn dockerd_arguments() {
        let p = Paths::new("busybox");
        let a = dockerd_args(
            &p,
            "/opt/busybox/appdata",
            &["--ip".into(), "203.0.113.25".into()],
        );
        let s = a.join(" ");
        assert_eq!(
            s,
            "-H unix:///var/lib/ferry/busybox/docker.sock --data-root /opt/busybox/appdata \
             --exec-root /var/lib/ferry/busybox/x --pidfile /var/lib/ferry/busybox/docker.pid \
             --containerd /var/lib/ferry/busybox/containerd.sock \
             --config-file /var/lib/ferry/busybox/daemon.json --bridge=none --iptables=false \
             --ip6tables=false --ip-masq=false --ip 203.0.113.25"
        );
        let mut argv = vec!["/usr/sbin/dockerd".to_string()];
        argv.extend(a);
        assert!(is_dockerd(&argv, &p));
        assert!(!is_dockerd(&argv, &Paths::new("busybox2")));
        assert!(!is_containerd(&argv, &p));
    }

    #[test]
    fn containerd_configuration() {
        let p = Paths::new("busybox");
        let t = containerd_config("busybox", &p);
        // Node-local, so it can start before the shared fs is mounted.
        assert!(
            t.contains("\nroot = \"/var/lib/ferry/busybox/cr\"\n"),
            "{t}"
        );
        assert!(t.contains("\nstate = \"/var/lib/ferry/busybox/cs\"\n"));
        assert!(t.contains("address = \"/var/lib/ferry/busybox/containerd.sock\"\n"));
        assert!(t.contains("address = \"/var/lib/ferry/busybox/containerd.sock.ttrpc\"\n"));
        assert!(t.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(t.contains("runtime_root = \"/var/lib/ferry/busybox/cs/runc\"\n"));
        assert!(t.contains("tcp_address = \"\""));
        assert!(!t.contains("/run/"));
        assert!(!t.contains("/opt/containerd"));
        let argv: Vec<String> = std::iter::once("containerd".to_string())
            .chain(containerd_args(&p))
            .collect();
        assert!(is_containerd(&argv, &p));
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn shim_matching() {
        let p = Paths::new("busybox");
        let argv: Vec<String> = [
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "moby",
            "-id",
            "abc",
            "-address",
            "/var/lib/ferry/busybox/containerd.sock",
        ]
        .map(String::from)
        .into();
        assert!(is_shim(&argv, &p));
        assert!(!is_shim(&argv, &Paths::new("other")));
    }

    #[test]
    fn data_root_must_be_mounted() {
        let root = [mount("/")];
        let e = check_data_root(&root, "/opt/busybox/appdata", &["/opt/busybox"]).unwrap_err();
        assert!(e.contains("/opt/busybox is not mounted"), "{e}");
        assert!(e.contains("start the fs first"), "{e}");
        // A leftover bind mount of the data root alone does not count.
        let stale = [mount("/"), mount("/opt/busybox/appdata")];
        assert!(check_data_root(&stale, "/opt/busybox/appdata", &["/opt/busybox"]).is_err());
        let ok = [mount("/"), mount("/opt/busybox")];
        assert!(check_data_root(&ok, "/opt/busybox/appdata", &["/opt/busybox"]).is_ok());
        // The deepest fs holding the data root is the one that counts.
        let nested = [mount("/"), mount("/opt")];
        assert!(
            check_data_root(&nested, "/opt/busybox/appdata", &["/opt", "/opt/busybox"]).is_err()
        );
        // Without fs resources: any mount but / will do.
        assert!(check_data_root(&root, "/srv/d", &[]).is_err());
        assert!(check_data_root(&[mount("/"), mount("/srv")], "/srv/d", &[]).is_ok());
        assert!(check_data_root(&[mount("/"), mount("/srvx")], "/srv/d", &[]).is_err());
    }

    #[test]
    fn leftovers_below_the_data_root() {
        let m = [
            mount("/"),
            mount("/opt/busybox"),
            mount("/opt/busybox/appdata"),
            mount("/opt/busybox/appdata/overlay2/abc/merged"),
            mount("/opt/busybox/appdata2"),
        ];
        assert_eq!(
            leftover_mounts(&m, "/opt/busybox/appdata", &["/opt/busybox"]),
            vec![
                "/opt/busybox/appdata/overlay2/abc/merged",
                "/opt/busybox/appdata"
            ]
        );
        // The data root is the fs itself: only what is below it goes.
        assert_eq!(
            leftover_mounts(&m, "/opt/busybox", &["/opt/busybox"]),
            vec![
                "/opt/busybox/appdata2",
                "/opt/busybox/appdata/overlay2/abc/merged",
                "/opt/busybox/appdata"
            ]
        );
    }

    #[test]
    fn stat_parsing() {
        assert_eq!(
            parse_stat("1234 (contai) nerd) S 1 1234 1234 0 -1 4194560"),
            Some(('S', 1))
        );
        assert_eq!(parse_stat("77 (sh) Z 12 77"), Some(('Z', 12)));
        assert_eq!(parse_stat("garbage"), None);
        assert!(alive(std::process::id() as i32));
    }

    #[test]
    fn ping_answers() {
        assert!(ping_ok(b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\n\r\nOK"));
        assert!(ping_ok(b"HTTP/1.1 200 OK\r\n\r\nOK"));
        assert!(!ping_ok(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"));
        assert!(!ping_ok(b""));
    }

    #[test]
    fn option_matching() {
        let argv: Vec<String> = ["x", "--pidfile=/a/b", "--config", "/c"]
            .map(String::from)
            .into();
        assert!(has_option(&argv, "--pidfile", Path::new("/a/b")));
        assert!(has_option(&argv, "--config", Path::new("/c")));
        assert!(!has_option(&argv, "--config", Path::new("/a/b")));
        assert!(!has_option(&argv, "--pidfile", Path::new("/a")));
    }
}
