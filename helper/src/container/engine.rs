//! The container, through the Docker API (bollard over the daemon's unix
//! socket; the API version is negotiated, dockerd 20.10 speaks 1.41).
//!
//! The first start creates `<svc>.container.<n>` from `run_image` (host
//! network, docker-init as PID 1, no restart policy) and starts it; later
//! starts start that very container, so its id and state follow the service
//! from node to node.

use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use ferry_core::config::{ContainerConfig, ServiceConfig};
use ferry_core::status::{ResourceStatus, State, IMAGE_DRIFT};
use futures_util::StreamExt;
use tracing::info;

use super::daemon;
use crate::error::{HelperError, Result};

/// Request timeout (s) of quick calls; a stop gets its own, longer one.
const API_TIMEOUT_S: u64 = 30;
/// Status must not hang on a wedged daemon.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_STATE: Duration = Duration::from_millis(5);
const UP_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_RUN_SETTLE: Duration = Duration::from_millis(100);
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL: &str = "10";

/// `<svc>.container.<n>` for rid `container#<n>`.
pub fn container_name(service: &str, rid: &str) -> String {
    let n = rid.split_once('#').map(|(_, n)| n).unwrap_or(rid);
    format!("{service}.container.{n}")
}

pub(super) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A client of the service's daemon, or None when it does not answer.
async fn connect(svc: &ServiceConfig, timeout_s: u64) -> Option<Docker> {
    let sock = daemon::socket_path(svc);
    let docker = Docker::connect_with_unix(
        &sock.to_string_lossy(),
        timeout_s,
        bollard::API_DEFAULT_VERSION,
    )
    .ok()?;
    // The /version round trip doubles as the liveness check.
    match tokio::time::timeout(STATUS_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(d)) => Some(d),
        _ => None,
    }
}

/// Does something accept connections on the daemon's socket?
async fn listening(sock: &std::path::Path) -> bool {
    matches!(
        tokio::time::timeout(STATUS_TIMEOUT, tokio::net::UnixStream::connect(sock)).await,
        Ok(Ok(_))
    )
}

async fn connect_or_fail(svc: &ServiceConfig, timeout_s: u64) -> Result<Docker> {
    connect(svc, timeout_s)
        .await
        .ok_or_else(|| daemon::not_running(svc))
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn api_error(what: &str, e: DockerError) -> HelperError {
    let msg = match e {
        DockerError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    HelperError::failed(format!("{what}: {msg}"))
}

/// The facts about a container that status and start look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    pub running: bool,
    /// `created`, `running`, `exited`…
    pub status: String,
    pub exit_code: i64,
    pub error: String,
    pub finished_at: String,
    /// The image as the container was created with (`Config.Image`).
    pub image_name: String,
    /// The image id the container runs (`Image`).
    pub image_id: String,
    /// Its main process (`State.Pid`, 0 when not running).
    pub pid: i64,
}

impl Observed {
    fn from_inspect(i: &ContainerInspectResponse) -> Observed {
        let state = i.state.clone().unwrap_or_default();
        Observed {
            id: i.id.clone().unwrap_or_default(),
            running: state.running.unwrap_or(false),
            status: state
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            exit_code: state.exit_code.unwrap_or(0),
            error: state.error.unwrap_or_default(),
            finished_at: state.finished_at.unwrap_or_default(),
            image_name: i
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image_id: i.image.clone().unwrap_or_default(),
            pid: state.pid.unwrap_or(0),
        }
    }

    /// `exited (137) at 2024-05-07T12:00:00Z`, `created`, …
    fn describe(&self) -> String {
        let mut s = match self.status.as_str() {
            "exited" | "dead" => format!("{} ({})", self.status, self.exit_code),
            "created" => "created, never started".into(),
            other => other.to_string(),
        };
        // Docker's zero time means "never".
        if matches!(self.status.as_str(), "exited" | "dead")
            && !self.finished_at.is_empty()
            && !self.finished_at.starts_with("0001-")
        {
            let t = self.finished_at.split('.').next().unwrap_or_default();
            let t = t.trim_end_matches('Z');
            s.push_str(&format!(" at {t}Z"));
        }
        if !self.error.is_empty() {
            s.push_str(&format!(": {}", self.error));
        }
        s
    }
}

/// What the daemon said about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    DaemonDown,
    NotFound,
    Found(Observed),
    /// The daemon answered, but not in a way we understand.
    Error(String),
}

/// The seed's status line for a container. `run_image_id` is the id the
/// configured image has in the daemon now (None: not looked up or absent).
pub fn map_status(
    rid: &str,
    run_image: &str,
    obs: &Observation,
    run_image_id: Option<&str>,
) -> ResourceStatus {
    match obs {
        Observation::DaemonDown => ResourceStatus::new(rid, State::Down, run_image)
            .with_comment(ferry_core::status::DAEMON_NOT_RUNNING),
        Observation::NotFound => ResourceStatus::new(rid, State::Down, run_image)
            .with_comment(ferry_core::status::NO_CONTAINER),
        Observation::Error(e) => ResourceStatus::new(rid, State::Warn, run_image).with_comment(e),
        Observation::Found(o) if o.running => {
            let label = format!("{}@{run_image}", short(&o.id));
            if o.image_name != run_image {
                ResourceStatus::new(rid, State::Warn, label).with_comment(format!(
                    "{IMAGE_DRIFT}the container runs image {}, not the configured run_image {run_image}",
                    o.image_name
                ))
            } else if run_image_id.is_some_and(|id| id != o.image_id) {
                ResourceStatus::new(rid, State::Warn, label).with_comment(format!(
                    "{IMAGE_DRIFT}{run_image} now names another image than the one the container runs ({})",
                    short(o.image_id.trim_start_matches("sha256:"))
                ))
            } else {
                ResourceStatus::new(rid, State::Up, label)
            }
        }
        Observation::Found(o) => {
            ResourceStatus::new(rid, State::Down, run_image).with_comment(o.describe())
        }
    }
}

async fn observe(docker: &Docker, name: &str) -> Observation {
    match docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(i) => Observation::Found(Observed::from_inspect(&i)),
        Err(e) if is_status(&e, 404) => Observation::NotFound,
        Err(e) => Observation::Error(format!("inspect {name}: {e}")),
    }
}

/// The container's status line, and its main process's pid when it runs
/// (for crate::status_cache).
pub async fn status(
    svc: &ServiceConfig,
    rid: &str,
    c: &ContainerConfig,
) -> (ResourceStatus, Option<i64>) {
    let name = container_name(&svc.name, rid);
    let Some(docker) = connect(svc, STATUS_TIMEOUT.as_secs()).await else {
        return (
            map_status(rid, &c.run_image, &Observation::DaemonDown, None),
            None,
        );
    };
    let obs = match tokio::time::timeout(STATUS_TIMEOUT, observe(&docker, &name)).await {
        Ok(o) => o,
        Err(_) => Observation::Error(format!(
            "docker daemon did not answer within {} s",
            STATUS_TIMEOUT.as_secs()
        )),
    };
    let image_id = match &obs {
        Observation::Found(o) if o.running && o.image_name == c.run_image => {
            match tokio::time::timeout(STATUS_TIMEOUT, docker.inspect_image(&c.run_image)).await {
                Ok(Ok(img)) => img.id,
                _ => None,
            }
        }
        _ => None,
    };
    let pid = match &obs {
        Observation::Found(o) if o.running && o.pid > 0 => Some(o.pid),
        _ => None,
    };
    (
        map_status(rid, &c.run_image, &obs, image_id.as_deref()),
        pid,
    )
}

/// The container's last log lines, for an error message.
async fn last_logs(docker: &Docker, id: &str) -> String {
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_TAIL.into(),
        ..Default::default()
    };
    let mut stream = docker.logs(id, Some(opts));
    let mut text = String::new();
    let collect = async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), collect).await;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        "no output".into()
    } else {
        format!("last output:\n  {}", lines.join("\n  "))
    }
}

/// The create request: `docker run -d -t -i --init --network=host
/// --restart=no --name=<name> <image>`. A tty and an open stdin as in the
/// seed, so `docker attach` works and detaches with ctrl-p ctrl-q;
/// docker-init as PID 1 so the container stops on SIGTERM at once instead
/// of after the stop timeout.
pub fn create_body(run_image: &str, stop_timeout: u32) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(run_image.to_string()),
        tty: Some(true),
        open_stdin: Some(true),
        stop_timeout: Some(i64::from(stop_timeout)),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The docker command line a create + start amounts to, for the log.
pub fn run_line(host: &str, name: &str, run_image: &str) -> String {
    format!("docker -H {host} run -d -t -i --init --network=host --restart=no --name={name} {run_image}")
}

/// How a start's wait for the container ended.
pub(super) enum Waited {
    /// It runs: what the engine said about it then.
    Up(Observed),
    /// It stopped instead: what the engine says about it.
    Exited(Observed),
}

/// Poll until the container runs, through `observe` (docker's API or
/// podman's CLI). On a first run, look once more a moment later: a wrong
/// command exits within milliseconds, and a first run that fails that way
/// is rolled back rather than left behind.
pub(super) async fn wait_up<F, Fut>(id: &str, first_run: bool, mut observe: F) -> Result<Waited>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Observation>,
{
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        match observe().await {
            Observation::Found(o) if o.running && !first_run => return Ok(Waited::Up(o)),
            Observation::Found(o) if o.running => {
                tokio::time::sleep(FIRST_RUN_SETTLE).await;
                return Ok(match observe().await {
                    Observation::Found(later) if !later.running => Waited::Exited(later),
                    _ => Waited::Up(o),
                });
            }
            Observation::Found(o) if matches!(o.status.as_str(), "exited" | "dead") => {
                return Ok(Waited::Exited(o))
            }
            Observation::NotFound => {
                return Err(HelperError::failed(format!(
                    "container {} disappeared while starting",
                    short(id)
                )))
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(HelperError::failed(format!(
                "container {} is not running after {} s",
                short(id),
                UP_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL_STATE).await;
    }
}

/// A start whose image the daemon does not have: name it, and say how to
/// get it there through ferry.
pub fn missing_image(service: &str, run_image: &str) -> String {
    format!(
        "image {run_image} is not in the service's docker daemon: load it first, with \
         `ferry docker {service} -- load < image.tar` (a `docker save` archive), \
         `ferry docker {service} -- import - {run_image} < rootfs.tar`, \
         or `ferry docker {service} -- pull {run_image}` where a registry is reachable"
    )
}

pub async fn start(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    let name = container_name(&svc.name, rid);
    let host = daemon::docker_host(svc);
    let docker = connect_or_fail(svc, API_TIMEOUT_S).await?;
    let mut log = Vec::new();

    // Existing container: start that one. Else create it (first run).
    let (id, created) = match observe(&docker, &name).await {
        Observation::Found(o) if o.running => {
            return Ok(vec![format!(
                "container {name} ({}) is already running",
                short(&o.id)
            )]);
        }
        Observation::Found(o) => {
            if o.image_name != c.run_image {
                log.push(format!(
                    "note: container {name} was created from {}, not from run_image {}",
                    o.image_name, c.run_image
                ));
            }
            log.push(format!("docker -H {host} start {}", short(&o.id)));
            (o.id, false)
        }
        Observation::NotFound => {
            if let Err(e) = docker.inspect_image(&c.run_image).await {
                return Err(if is_status(&e, 404) {
                    HelperError::failed(missing_image(&svc.name, &c.run_image))
                } else {
                    api_error(&format!("inspect image {}", c.run_image), e)
                });
            }
            log.push(run_line(&host, &name, &c.run_image));
            let opts = CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            let created = docker
                .create_container(Some(opts), create_body(&c.run_image, c.stop_timeout))
                .await
                .map_err(|e| api_error(&format!("create container {name}"), e))?;
            info!(container = %name, id = %created.id, "created");
            log.push(format!("output: {}", created.id));
            (created.id, true)
        }
        Observation::DaemonDown => return Err(daemon::not_running(svc)),
        Observation::Error(e) => return Err(HelperError::failed(e)),
    };

    let failure = match docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
    {
        // 304: it got started meanwhile.
        Err(e) if !is_status(&e, 304) => Some(api_error(&format!("start container {name}"), e)),
        _ => {
            log.push("wait for container up status".into());
            match wait_up(&id, created, || observe(&docker, &id)).await {
                Err(e) => Some(e),
                Ok(Waited::Up(_)) => None,
                Ok(Waited::Exited(o)) => Some(HelperError::failed(format!(
                    "container {name} ({}) stopped right after start: {}; {}",
                    short(&id),
                    o.describe(),
                    last_logs(&docker, &id).await
                ))),
            }
        }
    };
    match failure {
        None => {
            log.push(format!("container {name} ({}) is up", short(&id)));
            Ok(log)
        }
        Some(e) if created => {
            // Leave nothing behind a failed first run: the next start, once
            // the config or image is fixed, creates it afresh.
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let msg = match docker.remove_container(&id, Some(opts)).await {
                Ok(()) => format!(
                    "{}\n(removed container {} that this failed start had created)",
                    e.message(),
                    short(&id)
                ),
                Err(re) => format!(
                    "{}\n(and could not remove container {} that this start created: {re})",
                    e.message(),
                    short(&id)
                ),
            };
            Err(HelperError::Failed(msg))
        }
        Some(e) => Err(e),
    }
}

pub async fn stop(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    let name = container_name(&svc.name, rid);
    let host = daemon::docker_host(svc);
    // The stop call blocks for up to stop_timeout, then docker kills.
    let timeout_s = u64::from(c.stop_timeout) + API_TIMEOUT_S;
    let Some(docker) = connect(svc, timeout_s).await else {
        // Nobody listening: the daemon, and so the container, is down. A
        // daemon that accepts but does not answer may still run it: saying
        // "stopped" then would let a relocation start it a second time.
        if listening(&daemon::socket_path(svc)).await {
            return Err(HelperError::failed(format!(
                "the docker daemon of service {} accepts connections but does not answer: \
                 cannot tell whether {name} still runs",
                svc.name
            )));
        }
        return Ok(vec![format!(
            "docker daemon is not running: container {name} is already stopped"
        )]);
    };
    let o = match observe(&docker, &name).await {
        Observation::Found(o) if o.running => o,
        Observation::Found(o) => {
            return Ok(vec![format!(
                "container {name} ({}) is already stopped",
                short(&o.id)
            )])
        }
        Observation::NotFound => {
            return Ok(vec![format!("container {name} not found: already stopped")])
        }
        Observation::DaemonDown => {
            return Ok(vec![format!(
                "docker daemon is not running: container {name} is already stopped"
            )])
        }
        Observation::Error(e) => return Err(HelperError::failed(e)),
    };
    let t = i32::try_from(c.stop_timeout).unwrap_or(i32::MAX);
    let mut log = vec![format!("docker -H {host} stop -t {t} {}", short(&o.id))];
    let opts = StopContainerOptions {
        t: Some(t),
        signal: None,
    };
    match docker.stop_container(&o.id, Some(opts)).await {
        Ok(()) => {}
        // 304: it stopped on its own meanwhile; 404: removed meanwhile.
        Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
        Err(e) => return Err(api_error(&format!("stop container {name}"), e)),
    }
    log.push("wait for container down status".into());
    let deadline = Instant::now() + DOWN_TIMEOUT;
    loop {
        match observe(&docker, &o.id).await {
            Observation::Found(x) if x.running => {}
            Observation::Error(e) => return Err(HelperError::failed(e)),
            Observation::Found(x) => {
                log.push(format!(
                    "container {name} ({}) is down: {}",
                    short(&o.id),
                    x.describe()
                ));
                return Ok(log);
            }
            Observation::NotFound | Observation::DaemonDown => {
                log.push(format!("container {name} ({}) is down", short(&o.id)));
                return Ok(log);
            }
        }
        if Instant::now() >= deadline {
            return Err(HelperError::failed(format!(
                "container {name} ({}) still runs {} s after docker stop",
                short(&o.id),
                DOWN_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL_STATE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: &str, image: &str, image_id: &str) -> Observation {
        Observation::Found(Observed {
            id: id.into(),
            running: true,
            status: "running".into(),
            image_name: image.into(),
            image_id: image_id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_missing_image_says_how_to_load_it() {
        let m = missing_image("busybox", "local/busybox:date");
        assert!(m.contains("image local/busybox:date"), "{m}");
        assert!(
            m.contains("`ferry docker busybox -- load < image.tar`"),
            "{m}"
        );
        assert!(m.contains("import - local/busybox:date"), "{m}");
    }

    #[test]
    fn names() {
        assert_eq!(
            container_name("busybox", "container#1"),
            "busybox.container.1"
        );
        assert_eq!(container_name("b", "container#web"), "b.container.web");
    }

    #[test]
    fn status_mapping() {
        let img = "local/busybox:date";
        let s = map_status("container#1", img, &Observation::DaemonDown, None);
        assert_eq!((s.state.as_str(), s.label.as_str()), ("down", img));
        assert_eq!(s.comments, vec!["docker daemon is not running"]);

        let s = map_status("container#1", img, &Observation::NotFound, None);
        assert_eq!(s.state, "down");
        assert_eq!(s.comments, vec!["can not find container id"]);

        let id = "b82cf3232b79aaaabbbbccccddddeeeeffff00001111222233334444555566667";
        let s = map_status(
            "container#1",
            img,
            &running(id, img, "sha256:1"),
            Some("sha256:1"),
        );
        assert_eq!(s.state, "up");
        assert_eq!(s.label, "b82cf3232b79@local/busybox:date");
        assert!(s.comments.is_empty());

        let s = map_status(
            "container#1",
            img,
            &running(id, "local/other:1", "sha256:1"),
            None,
        );
        assert_eq!(s.state, "warn");
        assert!(
            s.comments[0].contains("runs image local/other:1"),
            "{:?}",
            s.comments
        );

        let s = map_status(
            "container#1",
            img,
            &running(id, img, "sha256:1"),
            Some("sha256:2"),
        );
        assert_eq!(s.state, "warn");
        // the OCF monitor tells drift (no restart fixes it) from failure by this
        assert!(s.comments[0].starts_with(IMAGE_DRIFT), "{:?}", s.comments);

        let exited = Observation::Found(Observed {
            id: id.into(),
            running: false,
            status: "exited".into(),
            exit_code: 137,
            finished_at: "2024-05-07T12:00:00.123456789Z".into(),
            image_name: img.into(),
            ..Default::default()
        });
        let s = map_status("container#1", img, &exited, None);
        assert_eq!((s.state.as_str(), s.label.as_str()), ("down", img));
        assert_eq!(s.comments, vec!["exited (137) at 2024-05-07T12:00:00Z"]);
    }

    #[test]
    fn create_request() {
        let b = create_body("local/busybox:date", 10);
        let v = serde_json::to_value(&b).expect("the create body serializes");
        assert_eq!(v["Image"], "local/busybox:date");
        assert_eq!(v["HostConfig"]["NetworkMode"], "host");
        assert_eq!(v["HostConfig"]["Init"], true);
        assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "no");
        assert_eq!(v["Tty"], true);
        assert_eq!(v["OpenStdin"], true);
        // Nothing that would publish a port or join a bridge.
        assert!(v["HostConfig"].get("PortBindings").is_none());
        assert!(v.get("NetworkingConfig").is_none());
        assert_eq!(
            run_line("unix:///var/lib/ferry/b/docker.sock", "b.container.1", "img:1"),
            "docker -H unix:///var/lib/ferry/b/docker.sock run -d -t -i --init --network=host --restart=no --name=b.container.1 img:1"
        );
    }
}
