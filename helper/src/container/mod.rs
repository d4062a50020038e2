//! Containers: `type = docker` (the service's private docker daemon and the
//! container it runs) and `type = podman` (no daemon).
//!
//! - [`daemon`]: the per-service containerd + dockerd, data root on the
//!   service's shared filesystem, sockets and pidfiles node-local;
//! - [`engine`]: the docker container itself, through the Docker API;
//! - [`podman`]: the podman container, through podman's CLI, storage root
//!   on the shared filesystem, run root and tmp dir node-local;
//! - [`passthrough`]: `ferry docker SVC -- ARGS…` for allowed subcommands,
//!   run by docker or podman, whichever runs the container.

pub mod daemon;
pub mod engine;
pub mod passthrough;
pub mod podman;

use std::collections::HashMap;

use ferry_core::config::{ContainerConfig, ContainerRuntime, ServiceConfig};
use ferry_core::dbus::CheckResult;
use ferry_core::status::ResourceStatus;
use zbus::message::Header;
use zbus::{interface, Connection, OwnedFd};

use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};

pub struct ContainerObject {
    pub ctx: ResCtx,
}

/// The container's status, and its main process's pid when it runs.
pub async fn status(
    svc: &ServiceConfig,
    rid: &str,
    c: &ContainerConfig,
) -> (ResourceStatus, Option<i64>) {
    if c.runtime == ContainerRuntime::Podman {
        return podman::status(svc, rid, c).await;
    }
    let (s, pid) = engine::status(svc, rid, c).await;
    // A daemon that does not answer may still run, holding the data root
    // on the shared fs: that is not "down".
    // (A daemon that answers without the container is the tutorial's
    // "can not find container id": down, not this.)
    let daemon_down = s
        .comments
        .iter()
        .any(|c| c == ferry_core::status::DAEMON_NOT_RUNNING);
    if s.state() == ferry_core::status::State::Down && daemon_down && daemon::has_processes(svc) {
        let s = ResourceStatus::new(rid, ferry_core::status::State::Warn, &s.label).with_comment(
            "processes of the service's docker daemon still run here, though it does not answer",
        );
        return (s, None);
    }
    (s, pid)
}

fn config(ctx: &ResCtx) -> Result<(std::sync::Arc<ServiceConfig>, ContainerConfig)> {
    ctx.config()
}

/// Start the container with the engine its `type` names.
pub async fn start(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    match c.runtime {
        ContainerRuntime::Docker => engine::start(svc, rid, c).await,
        ContainerRuntime::Podman => podman::start(svc, rid, c).await,
    }
}

/// Stop the container with the engine its `type` names.
pub async fn stop(svc: &ServiceConfig, rid: &str, c: &ContainerConfig) -> Result<Vec<String>> {
    match c.runtime {
        ContainerRuntime::Docker => engine::stop(svc, rid, c).await,
        ContainerRuntime::Podman => podman::stop(svc, rid, c).await,
    }
}

/// A method on the private daemon pair: polkit, guard and audit as every
/// privileged call; podman has no daemon, so nothing to do there.
async fn daemon_step<F, Fut>(
    ctx: &ResCtx,
    conn: &Connection,
    header: &Header<'_>,
    action: &str,
    run: F,
) -> Result<Vec<String>>
where
    F: FnOnce(std::sync::Arc<ServiceConfig>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>>>,
{
    ctx.privileged(conn, header, action, || async {
        let (svc, c) = config(ctx)?;
        if let Some(log) = no_daemon(&c) {
            return Ok(log);
        }
        run(svc).await
    })
    .await
}

/// Podman has no daemon: its Prepare/Start/StopDaemon do nothing, and say so.
fn no_daemon(c: &ContainerConfig) -> Option<Vec<String>> {
    (c.runtime == ContainerRuntime::Podman)
        .then(|| vec!["podman runs no daemon: nothing to do".to_string()])
}

/// The first argument must be an allowed subcommand (the check itself is
/// in ferry-core, where the fuzz targets reach it).
pub fn check_docker_args(args: &[String]) -> Result<()> {
    ferry_core::docker_args::check_docker_args(args).map_err(HelperError::InvalidArgument)
}

/// Resolves when `sender` has no owner on the bus any more.
async fn caller_gone(conn: &Connection, sender: &str) {
    use futures_util::StreamExt;
    let watch = async {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let mut changes = dbus
            .receive_name_owner_changed_with_args(&[(0, sender)])
            .await?;
        // Subscribed first, then checked: no departure slips between the two.
        let name = zbus::names::BusName::try_from(sender)?;
        if !dbus.name_has_owner(name).await? {
            return Ok::<(), zbus::Error>(());
        }
        while let Some(signal) = changes.next().await {
            if signal.args()?.new_owner().is_none() {
                return Ok(());
            }
        }
        Ok(())
    };
    if let Err(e) = watch.await {
        // Without the watch, fall back to waiting for docker alone.
        tracing::warn!("cannot watch caller {sender}: {e}");
        std::future::pending::<()>().await;
    }
}

#[interface(name = "io.ferry.Helper1.Container")]
impl ContainerObject {
    /// This resource's line of the service's status, as of now, from
    /// cheap checks (see crate::status_cache).
    async fn check(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<CheckResult> {
        Ok(self.ctx.check(conn, &header).await?.into_check())
    }

    /// Start the service's private containerd ahead of dockerd, without
    /// waiting for it: it keeps nothing on shared storage, so it boots
    /// while the start mounts the filesystems. Same action and guard as
    /// StartDaemon, which then only adds dockerd.
    async fn prepare_daemon(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        daemon_step(
            &self.ctx,
            conn,
            &header,
            "io.ferry.container.start-daemon",
            |svc| async move { daemon::prepare(&svc).await },
        )
        .await
    }

    /// Start the service's private containerd (unless PrepareDaemon did; a
    /// prepared one still booting is waited for) and dockerd (data root on
    /// the service's filesystem, which must be mounted).
    async fn start_daemon(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        daemon_step(
            &self.ctx,
            conn,
            &header,
            "io.ferry.container.start-daemon",
            |svc| async move { daemon::start(&svc).await },
        )
        .await
    }

    /// Stop the private daemon, once it runs no container any more.
    async fn stop_daemon(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        daemon_step(
            &self.ctx,
            conn,
            &header,
            "io.ferry.container.stop-daemon",
            |svc| async move { daemon::stop(&svc).await },
        )
        .await
    }

    /// Start the container: the same one as before if it exists, else run
    /// the image as `<svc>.container.<n>`; wait until it runs.
    async fn start(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.container.start", || async {
            let (svc, c) = config(ctx)?;
            start(&svc, &ctx.rid, &c).await
        })
        .await
    }

    /// Stop the container (SIGTERM, then kill after stop_timeout).
    async fn stop(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.container.stop", || async {
            let (svc, c) = config(ctx)?;
            stop(&svc, &ctx.rid, &c).await
        })
        .await
    }

    /// Run an allowed docker subcommand against the service's daemon, with
    /// the caller's stdin/stdout/stderr; returns docker's exit status.
    async fn docker(
        &self,
        args: Vec<String>,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<i32> {
        // Checks, polkit and audit live with the passthrough itself.
        passthrough::serve(&self.ctx, args, stdin, stdout, stderr, &header, conn).await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn rid(&self) -> String {
        self.ctx.rid.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn settings(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Ok((svc, c)) = config(&self.ctx) {
            m.insert("type".into(), c.runtime.as_str().into());
            m.insert("run_image".into(), c.run_image);
            m.insert("stop_timeout".into(), c.stop_timeout.to_string());
            let (key, dir) = match c.runtime {
                ContainerRuntime::Docker => ("docker_data_dir", &svc.docker_data_dir),
                ContainerRuntime::Podman => ("podman_data_dir", &svc.podman_data_dir),
            };
            if let Some(d) = dir {
                m.insert(key.into(), d.clone());
            }
            if !c.ulimits.is_empty() {
                m.insert("ulimit".into(), c.ulimits.join(" "));
            }
            m.insert(
                "container_name".into(),
                engine::container_name(&svc.name, &self.ctx.rid),
            );
        }
        m
    }
}
