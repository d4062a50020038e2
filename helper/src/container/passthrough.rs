//! `ferry docker SVC -- ARGS…`: an allowed docker subcommand run against the
//! service's daemon, with the caller's stdin/stdout/stderr.
//!
//! mod.rs checked the subcommand against the allow-list. The CLI still runs
//! as root with the helper's view of the filesystem, so options that make
//! the CLI itself read or write a file by path (`load -i`, `save -o`,
//! `import FILE`) are refused here: the caller redirects its own stdin and
//! stdout instead, with its own rights. The CLI gets a clean environment and
//! an empty node-local DOCKER_CONFIG: no user's config, context or credential
//! helper is ever read.
//!
//! A `type = podman` container's service gets podman instead, with the same
//! allow-list and refusals, plus podman's own (its global options are
//! accepted after the subcommand too: none may be given). Podman has no
//! daemon to start on demand: it runs only where the service's storage is
//! up here (the guard of a start: address and lease here, every fs mounted).

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use ferry_core::config::{ContainerConfig, ContainerRuntime, ResourceConfig, ServiceConfig};
use ferry_core::status::State;
use tracing::info;
use zbus::message::Header;
use zbus::Connection;

use super::daemon;
use crate::audit::{Outcome, Record};
use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};

const ACTION: &str = "io.ferry.container.docker";

/// `Container.Docker`: identify the caller first, so that every refusal
/// (allow-list, file options, host daemon, polkit) leaves an audit record
/// with the arguments; then run docker without holding the service mutex,
/// since an attach may last hours.
pub async fn serve(
    ctx: &ResCtx,
    args: Vec<String>,
    stdin: zbus::OwnedFd,
    stdout: zbus::OwnedFd,
    stderr: zbus::OwnedFd,
    header: &Header<'_>,
    conn: &Connection,
) -> Result<i32> {
    let (service, rid) = (ctx.service.as_str(), ctx.rid.as_str());
    let who = match crate::auth::caller(conn, header).await {
        Ok(w) => w,
        Err(e) => {
            Record::new(None, ACTION, service, rid, Outcome::Denied)
                .args(&args)
                .error(&e)
                .log();
            return Err(e);
        }
    };
    let deny = |e: HelperError| {
        Record::new(Some(&who), ACTION, service, rid, Outcome::Denied)
            .args(&args)
            .error(&e)
            .log();
        e
    };
    let (svc, c) = ctx.config::<ContainerConfig>().map_err(deny)?;
    let podman = c.runtime == ContainerRuntime::Podman;
    if podman {
        ferry_core::docker_args::check_podman_args(&args)
            .map_err(HelperError::InvalidArgument)
            .map_err(deny)?;
    } else {
        super::check_docker_args(&args).map_err(deny)?;
        check_file_access(&args).map_err(deny)?;
    }
    // The host's own daemon runs containers that are not the service's:
    // handing it to a caller granted this service would grant them all.
    if !podman && svc.docker_data_dir.is_none() {
        return Err(deny(HelperError::InvalidArgument(format!(
            "service '{}' uses the host's docker daemon: `ferry docker` serves only services \
             with a private daemon (docker_data_dir)",
            svc.name
        ))));
    }
    crate::auth::authorize(
        ctx.reg.authority(),
        header,
        &who,
        ACTION,
        service,
        rid,
        ctx.reg.node(),
    )
    .await
    .map_err(deny)?;
    Record::new(Some(&who), ACTION, service, rid, Outcome::Allowed)
        .args(&args)
        .log();
    // A new service has no image yet: `images`, `load`, `import`, `pull`
    // need the daemon before any container exists. Start it here, as a
    // start would, under the same rules (and its own polkit action).
    // Podman needs no daemon, only the storage, under the same rules.
    let ready = if podman {
        storage_up_here(ctx, &svc).await
    } else if !daemon::is_running(&svc).await {
        start_on_demand(ctx, &svc, header, conn).await
    } else {
        Ok(())
    };
    if let Err(e) = ready {
        Record::new(Some(&who), ACTION, service, rid, Outcome::Failed)
            .args(&args)
            .error(&e)
            .log();
        return Err(e);
    }
    // A caller that goes away (Ctrl-C on `ferry docker … -- attach`) must
    // not leave docker holding its terminal: dropping the run future kills
    // the CLI.
    let outcome = tokio::select! {
        r = run_engine(podman, &svc, &args, CallerStdio::new(stdin, stdout, stderr)) => r,
        _ = super::caller_gone(conn, &who.sender) => {
            tracing::info!(uid = who.uid, service = %service, "docker caller left the bus: docker CLI killed");
            Err(HelperError::failed("the caller left"))
        }
    };
    if let Err(e) = &outcome {
        Record::new(Some(&who), ACTION, service, rid, Outcome::Failed)
            .args(&args)
            .error(e)
            .log();
    }
    outcome
}

/// The polkit action (and guard rule) of starting the daemon on demand.
const START_DAEMON: &str = "io.ferry.container.start-daemon";

/// Start the service's daemon for a `ferry docker` call: authorized for
/// `io.ferry.container.start-daemon` too, under the service mutex and the
/// service lock, and only where the service's storage is up here (address,
/// lease, every filesystem). The daemon keeps running; `ferry stop` stops it.
async fn start_on_demand(
    ctx: &ResCtx,
    svc: &ServiceConfig,
    header: &Header<'_>,
    conn: &Connection,
) -> Result<()> {
    crate::auth::privileged(
        &ctx.reg,
        conn,
        header,
        START_DAEMON,
        &ctx.service,
        &ctx.rid,
        || async {
            // Another call may have started it while this one waited.
            if daemon::is_running(svc).await {
                return Ok(());
            }
            storage_up_here(ctx, svc).await?;
            for line in daemon::start(svc).await? {
                info!(service = %svc.name, rid = %ctx.rid, "on demand: {line}");
            }
            Ok(())
        },
    )
    .await
}

/// The rids a start must bring up before the daemon: everything but the
/// containers, in start order.
fn storage_rids(svc: &ServiceConfig) -> Vec<&str> {
    svc.resources
        .iter()
        .filter(|r| !matches!(r.config, ResourceConfig::Container(_)))
        .map(|r| r.rid.as_str())
        .collect()
}

fn storage_not_up(svc: &ServiceConfig, why: &str) -> HelperError {
    let podman = svc.podman_data_dir.is_some() && svc.docker_data_dir.is_none();
    let what = if podman {
        "podman runs only where the service's storage is up".to_string()
    } else {
        format!(
            "docker daemon of service {} is not running, and ferry starts it on demand only \
             where the service's storage is up",
            svc.name
        )
    };
    HelperError::DaemonNotRunning(format!(
        "{what}: {why}. Start the storage first: `ferry start {} --rid {}`",
        svc.name,
        storage_rids(svc).join(",")
    ))
}

/// The guard of a daemon start (address up here, lease held here), and
/// every filesystem of the service mounted here.
async fn storage_up_here(ctx: &ResCtx, svc: &ServiceConfig) -> Result<()> {
    crate::guard::check(ctx, START_DAEMON)
        .await
        .map_err(|e| storage_not_up(svc, &e.message()))?;
    for r in &svc.resources {
        if let ResourceConfig::Fs(c) = &r.config {
            let s = crate::fs::status(&r.rid, c).await;
            if s.state() != State::Up {
                return Err(storage_not_up(
                    svc,
                    &format!("{} ({}) is not mounted here", r.rid, c.mnt),
                ));
            }
        }
    }
    Ok(())
}

/// Arguments that would make the root CLI read or write a file by path, and
/// `image` subcommands beyond the daemon's own business (the check itself is
/// in ferry-core, where the fuzz targets reach it).
pub fn check_file_access(args: &[String]) -> Result<()> {
    ferry_core::docker_args::check_file_access(args).map_err(HelperError::InvalidArgument)
}

/// The caller's stdin, stdout and stderr, passed over D-Bus: the CLI runs
/// on them.
pub struct CallerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl CallerStdio {
    fn new(stdin: zbus::OwnedFd, stdout: zbus::OwnedFd, stderr: zbus::OwnedFd) -> Self {
        CallerStdio {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }
}

async fn run_engine(
    podman: bool,
    svc: &ServiceConfig,
    args: &[String],
    stdio: CallerStdio,
) -> Result<i32> {
    if podman {
        run_podman(svc, args, stdio).await
    } else {
        run(svc, args, stdio).await
    }
}

/// podman with the service's global options and ferry's containers.conf,
/// on the caller's descriptors.
pub async fn run_podman(svc: &ServiceConfig, args: &[String], stdio: CallerStdio) -> Result<i32> {
    // serve() checked already; kept so that this is safe on its own.
    ferry_core::docker_args::check_podman_args(args).map_err(HelperError::InvalidArgument)?;
    super::podman::storage_mounted(svc)?;
    let dir = svc
        .podman_data_dir
        .as_deref()
        .ok_or_else(|| HelperError::failed("no podman_data_dir"))?;
    let p = super::podman::prepare(svc)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    info!(target: "exec", service = %svc.name, "podman --root {dir} {}", crate::audit::clean_args(args));
    let mut cmd = super::podman::command(&p, dir, &a);
    cmd.env(super::podman::PASSTHROUGH_ENV, "1");
    exit_code_of(cmd, "podman", stdio).await
}

pub async fn run(svc: &ServiceConfig, args: &[String], stdio: CallerStdio) -> Result<i32> {
    // serve() checked already; kept so that run() is safe on its own.
    check_file_access(args)?;
    if !daemon::is_running(svc).await {
        return Err(daemon::not_running(svc));
    }
    let paths = daemon::prepare_state_dir(svc)?;
    let argv = ferry_core::docker_args::docker_argv(&daemon::docker_host(svc), args);
    // The arguments are the caller's: escaped and bounded like an audit field.
    info!(target: "exec", service = %svc.name, "docker {}", crate::audit::clean_args(&argv));
    let mut cmd =
        tokio::process::Command::new(crate::cmd::trusted_program("docker", daemon::PATH_ENV)?);
    cmd.arg0("docker")
        .args(&argv)
        .env_clear()
        .env("PATH", daemon::PATH_ENV)
        .env("HOME", "/nonexistent")
        .env("DOCKER_CONFIG", &paths.docker_config)
        .env("DOCKER_CLI_HINTS", "false")
        .current_dir("/")
        // A dropped call (helper shutting down) must not leave the CLI behind.
        .kill_on_drop(true);
    exit_code_of(cmd, "docker", stdio).await
}

/// Run the CLI on the caller's descriptors; its exit code as a shell gives
/// it (128 + signal).
async fn exit_code_of(
    mut cmd: tokio::process::Command,
    name: &str,
    stdio: CallerStdio,
) -> Result<i32> {
    cmd.stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    let mut child = cmd
        .spawn()
        .map_err(|e| HelperError::failed(format!("cannot run {name}: {e}")))?;
    // The Command holds our copies of the caller's descriptors: drop them so
    // the caller sees EOF as soon as the CLI exits.
    drop(cmd);
    let status = child
        .wait()
        .await
        .map_err(|e| HelperError::failed(format!("{name}: {e}")))?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn refusals_are_invalid_arguments() {
        let e = check_file_access(&v(&["load", "-i", "/etc/shadow"])).expect_err("refused");
        assert_eq!(e.kind(), "InvalidArgument");
        assert!(check_file_access(&v(&["load"])).is_ok());
    }

    #[test]
    fn storage_not_up_says_what_to_start() {
        let text = include_str!("../../../tests/lab/busybox.conf");
        let svc = ferry_core::config::parse_service("busybox.conf", text).expect("lab config");
        assert_eq!(
            storage_rids(&svc),
            vec!["ip#1", "lease#1", "vg#1", "fs#1", "fs#2"]
        );
        let e = storage_not_up(&svc, "fs#2 (/srv/busybox/appdata) is not mounted here");
        assert_eq!(e.kind(), "DaemonNotRunning");
        let m = e.message();
        assert!(
            m.contains("fs#2 (/srv/busybox/appdata) is not mounted here"),
            "{m}"
        );
        assert!(
            m.contains("`ferry start busybox --rid ip#1,lease#1,vg#1,fs#1,fs#2`"),
            "{m}"
        );
    }
}
