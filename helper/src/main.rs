//! ferry-helper: the root daemon behind `io.ferry.Helper1` on the system bus.
//!
//! Minimal on purpose: it exports one object per service and per resource,
//! asks polkit before every mutating call, and runs the resource drivers.
//! Orchestration (order, rollback, remote nodes) lives in the unprivileged
//! frontend.

mod arp;
mod audit;
mod auth;
mod cmd;
mod container;
mod ctx;
mod error;
mod events;
mod export;
mod fs;
mod guard;
mod ip;
mod journal;
mod lease;
mod leasewatch;
mod lock;
mod manager;
mod registry;
mod sanlock;
mod service;
mod status_cache;
mod takeover;
mod vg;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use caps::{CapSet, Capability};
use ferry_core::config::{services_dir, NodeConfig, DEFAULT_NODE_CONFIG};
use ferry_core::dbus::{BUS_NAME, ROOT_PATH};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use zbus_polkit::policykit1::AuthorityProxy;

use crate::manager::ManagerObject;
use crate::registry::Registry;

/// What the drivers cannot work without: addresses and raw ARP, mounts.
const REQUIRED_CAPS: &[Capability] = &[
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_ADMIN,
];

fn check_capabilities() -> Result<(), String> {
    let effective = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
    let missing: Vec<String> = REQUIRED_CAPS
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing capabilities: {}", missing.join(", ")))
    }
}

async fn run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "ferry-helper must run as root (it is started by D-Bus activation or systemd)".into(),
        );
    }
    check_capabilities()?;
    let node_conf = std::env::var_os("FERRY_NODE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_CONFIG));
    let node_conf = NodeConfig::load(&node_conf).map_err(|e| e.to_string())?;
    let node = node_conf.node_name();
    let dir = services_dir();

    let conn = zbus::connection::Builder::system()
        .build()
        .await
        .map_err(|e| format!("cannot connect to the system bus: {e}"))?;
    let authority = AuthorityProxy::new(&conn)
        .await
        .map_err(|e| format!("polkit authority: {e}"))?;
    let reg = Arc::new(Registry::new(dir.clone(), node_conf, authority));

    // Objects first, then the name: a caller that sees the name finds them.
    let server = conn.object_server();
    server
        .at(ROOT_PATH, zbus::fdo::ObjectManager)
        .await
        .map_err(|e| e.to_string())?;
    server
        .at(ROOT_PATH, ManagerObject { reg: reg.clone() })
        .await
        .map_err(|e| e.to_string())?;
    let services = export::reload(&reg, server)
        .await
        .map_err(|e| e.message())?;
    conn.request_name(BUS_NAME).await.map_err(|e| {
        format!("cannot own {BUS_NAME}: {e} (is the bus policy installed, and are we root?)")
    })?;
    info!(node = %node, dir = %dir.display(), services = ?services, "ferry-helper ready on {BUS_NAME}");
    // Sub-second record of other hosts' lease renewals, for the takeover.
    tokio::spawn(takeover::watch_holders(reg.clone()));

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                // sanlock sends SIGTERM (SIGKILL is restricted) when a lease
                // is lost: the helper must stay to let go of the storage.
                if leasewatch::on_sigterm().await {
                    info!("SIGTERM while a lease is lost here: staying to let go of the storage");
                    continue;
                }
                info!("SIGTERM: exiting; service daemons keep running");
            }
            _ = int.recv() => info!("SIGINT: exiting; service daemons keep running"),
        }
        break;
    }
    Ok(())
}

/// Under systemd the journal is where the helper's records belong, with
/// their fields kept: `journalctl -u ferry-helper FERRY_SERVICE=busybox`.
/// JOURNAL_STREAM says systemd connected our stderr to the journal; without
/// it (started by hand from a terminal) the operator wants to read stderr.
fn journald_wanted() -> bool {
    use std::io::IsTerminal;
    Path::new("/run/systemd/system").exists()
        && (std::env::var_os("JOURNAL_STREAM").is_some()
            || (Path::new("/run/systemd/journal/socket").exists()
                && !std::io::stderr().is_terminal()))
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if journald_wanted() {
        match journal::Journald::new() {
            // Fields become FERRY_<NAME> (FERRY_ACTION, FERRY_SERVICE,
            // FERRY_RID, FERRY_UID, FERRY_RESULT…): see journal.rs.
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .with(events::AuditRing)
                    .init();
                return;
            }
            Err(e) => eprintln!("ferry-helper: journald unavailable ({e}); logging to stderr"),
        }
    }
    // The lab (no systemd): plain lines on stderr, which the lab keeps in a file.
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(events::AuditRing)
        .init();
}

fn main() -> ExitCode {
    // Before any bus work: `--help` and `--version` must answer on a host
    // without a system bus, and a stray argument must not start a daemon.
    let _args = <ferry_core::helper_cli::HelperArgs as clap::Parser>::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
