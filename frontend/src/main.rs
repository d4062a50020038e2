//! ferry: the operator's command. Runs as any user; everything privileged is
//! a call to this node's ferry-helper (or, for other nodes, to theirs over
//! ssh), which asks polkit.

mod action;
mod client;
mod docker;
mod error;
mod gen;
mod lock;
mod log;
mod ocf;
mod relocate;
mod remote;
mod resource;
mod status;
mod sync;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_core::config;

use crate::client::Helper;
use crate::error::{FerryError, Result};
use crate::log::Log;

/// `ferry --version`: the version and the git commit it was built from
/// (build.rs), so a report from a node names the exact build.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("FERRY_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "ferry",
    version = VERSION,
    about = "Relocate Docker-based services between nodes sharing storage"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the status tree of services on this node (all when none named).
    Status(StatusArgs),
    /// Start a service here (all resources, or those named with --rid).
    /// Refused for a service Pacemaker manages, unless --force.
    Start {
        service: String,
        /// Resource ids, e.g. --rid ip#1,fs#1
        #[arg(long, value_delimiter = ',')]
        rid: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        act: ActArgs,
        /// (for relocate) Connect and take the lock, say so, then start
        /// only once "go" arrives on stdin.
        #[arg(long, hide = true)]
        wait_go: bool,
    },
    /// Stop a service here, in the reverse order of start. Refused for a
    /// service Pacemaker manages, unless --force.
    Stop {
        service: String,
        #[arg(long, value_delimiter = ',')]
        rid: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        act: ActArgs,
    },
    /// Push the service's config to its other nodes (from the node running it).
    Sync {
        service: String,
        /// Push outside the [sync#…] schedule window, or from a node where
        /// the service is not running.
        #[arg(long)]
        force: bool,
    },
    /// Move the service to another of its nodes.
    #[command(alias = "switch")]
    Relocate {
        service: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// (for peers) Install a config read from stdin through this node's helper.
    #[command(hide = true)]
    ReceiveConfig { service: String },
    /// Print things: `ferry print config SVC`.
    Print {
        #[command(subcommand)]
        what: PrintWhat,
    },
    /// Validate config files; every error as FILE:LINE: [section] key: what.
    Validate { files: Vec<PathBuf> },
    /// Run an allowed docker subcommand against the service's daemon.
    Docker {
        service: String,
        #[arg(long)]
        rid: Option<String>,
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Ask the helper to re-read the config directory.
    Reload,
    /// Act as the OCF resource agent ocf:ferry:service (start, stop,
    /// monitor, validate-all, meta-data), for Pacemaker; the service comes
    /// from OCF_RESKEY_service.
    Ocf { action: String },
    /// The service's disk lease: `ferry lease init SVC` writes a fresh lease
    /// area (once, before first use; refused where one is already there).
    Lease {
        #[command(subcommand)]
        what: LeaseWhat,
    },
}

#[derive(Subcommand)]
enum LeaseWhat {
    /// Write the lockspace and the lease on the service's lease area.
    Init { service: String },
}

#[derive(clap::Args)]
struct LockArgs {
    /// Wait up to SECONDS for another action on the service to finish
    /// (default 0; with --break-lock, 10).
    #[arg(long, value_name = "SECONDS")]
    waitlock: Option<u64>,
}

impl LockArgs {
    /// The wait in the helper's unit; an absurd value is a usage error,
    /// found before anything is asked of anyone.
    fn wait_ms(&self) -> Result<u32> {
        lock::wait_ms(self.waitlock.unwrap_or(0))
    }
}

/// What `ferry start` and `ferry stop` may override.
#[derive(clap::Args)]
struct ActArgs {
    /// Act although Pacemaker manages the service (it will then see the
    /// service where it did not put it).
    #[arg(long)]
    force: bool,
    /// When another caller holds the service's lock and stays idle after
    /// --waitlock (default 10 s), break its lock (audited; needs
    /// io.ferry.service.break-lock). A holder in the middle of an action
    /// keeps it.
    #[arg(long)]
    break_lock: bool,
}

impl ActArgs {
    /// Take the service's lock as the flags say.
    async fn lock(&self, l: &LockArgs, h: &Helper, service: &str, node: &str) -> Result<()> {
        if self.break_lock {
            let wait = lock::wait_ms(l.waitlock.unwrap_or(lock::BREAK_WAIT_SECS))?;
            lock::acquire_breaking(h, service, node, wait).await
        } else {
            lock::acquire(h, service, node, l.wait_ms()?).await
        }
    }
}

/// Pacemaker owns what it manages: a start or stop behind its back leaves
/// the cluster showing the resource FAILED while it runs elsewhere, so
/// they are refused (as `relocate` is) unless `force`.
fn refuse_if_pacemaker_manages(service: &str, verb: &str, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    match ocf::pacemaker_resource(service) {
        Ok(Some(id)) => Err(FerryError::Usage(format!(
            "'{service}' is managed by Pacemaker as resource '{id}': a {verb} behind its back \
             makes the cluster see it FAILED; let the cluster act (crm_resource --move -r {id} \
             -N NODE to move it, crm_resource --ban -r {id} -N NODE to keep it off a node, then \
             crm_resource --clear -r {id}), or pass --force"
        ))),
        Ok(None) => Ok(()),
        // Only root and haclient may read the CIB: an operator outside it
        // is warned, not stopped (the helper cannot tell either yet).
        Err(why) => {
            eprintln!("ferry: warning: {why}; going ahead with the {verb}");
            Ok(())
        }
    }
}

/// What `ferry status` and `ferry print status` take.
#[derive(clap::Args)]
struct StatusArgs {
    services: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Ask every node of the service, in parallel.
    #[arg(long)]
    all_nodes: bool,
    /// This node only: do not compare configs with the peers.
    #[arg(long)]
    local: bool,
    /// Ask LVM and the docker daemon again rather than trust what the
    /// helper knows (the slow path).
    #[arg(long)]
    refresh: bool,
}

#[derive(Subcommand)]
enum PrintWhat {
    /// The service's config as this node's helper runs it.
    Config { service: String },
    /// The tutorial's `print status`: the same as `ferry status SVC…`.
    Status(StatusArgs),
}

fn validate(files: &[PathBuf]) -> Result<()> {
    if files.is_empty() {
        return Err(FerryError::Usage(
            "ferry validate: name at least one file".into(),
        ));
    }
    let mut errors = Vec::new();
    for f in files {
        match config::load_service(f) {
            Ok(cfg) => {
                println!(
                    "{}: ok (service {}, {} resources, sha256 {})",
                    f.display(),
                    cfg.name,
                    cfg.resources.len(),
                    &cfg.checksum()[..12]
                );
                for w in config::warnings(&cfg) {
                    println!("{}: warning: {w}", f.display());
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FerryError::Config(config::ConfigErrors(errors)))
    }
}

async fn status(
    services: Vec<String>,
    format: Format,
    all_nodes: bool,
    local: bool,
    refresh: bool,
) -> Result<()> {
    let h = Helper::connect().await?;
    let node = h.node_name().await?;
    let names = if services.is_empty() {
        h.services().await?
    } else {
        services
    };
    if all_nodes {
        for name in &names {
            let cfg = h.config(name).await?;
            print!("{}", status::cluster(&h, &cfg, &node).await?);
        }
        return Ok(());
    }
    if refresh {
        for name in &names {
            h.service(name).await?.refresh().await?;
        }
    }
    let mut all = Vec::new();
    for name in &names {
        let cfg = h.config(name).await?;
        all.push(status::service_status(&h, &cfg, &node, !local).await?);
    }
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&all)
                .map_err(|e| FerryError::Failed(e.to_string()))?;
            println!("{text}");
        }
        Format::Text => {
            for s in &all {
                print!("{}", s.render_tree());
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<i32> {
    if matches!(
        cli.cmd,
        Cmd::Start { .. } | Cmd::Stop { .. } | Cmd::Relocate { .. } | Cmd::Sync { .. }
    ) {
        log::guard_signals();
    }
    match cli.cmd {
        Cmd::Validate { files } => validate(&files).map(|_| 0),
        Cmd::Status(a)
        | Cmd::Print {
            what: PrintWhat::Status(a),
        } => status(a.services, a.format, a.all_nodes, a.local, a.refresh)
            .await
            .map(|_| 0),
        Cmd::Start {
            service,
            rid,
            lock,
            act,
            wait_go,
        } => {
            lock.wait_ms()?;
            refuse_if_pacemaker_manages(&service, "start", act.force)?;
            let h = Helper::connect().await?;
            let cfg = h.config(&service).await?;
            let node = h.node_name().await?;
            // Held by this connection until the process exits; under sudo,
            // as root (no polkit needed).
            act.lock(&lock, &h, &service, &node).await?;
            if wait_go && !remote::ready_for_go().await {
                return Err(FerryError::Failed(format!(
                    "start of '{service}' on {node} called off: no go from the relocating node"
                )));
            }
            action::start(&h, &cfg, &node, &rid, &Log::new(&service))
                .await
                .map(|_| 0)
        }
        Cmd::Stop {
            service,
            rid,
            lock,
            act,
        } => {
            lock.wait_ms()?;
            refuse_if_pacemaker_manages(&service, "stop", act.force)?;
            let h = Helper::connect().await?;
            let cfg = h.config(&service).await?;
            let node = h.node_name().await?;
            act.lock(&lock, &h, &service, &node).await?;
            action::stop(&h, &cfg, &rid, &Log::new(&service))
                .await
                .map(|_| 0)
        }
        Cmd::Sync { service, force } => {
            let h = Helper::connect().await?;
            let cfg = h.config(&service).await?;
            let node = h.node_name().await?;
            sync::push(&h, &cfg, &node, force, &Log::new(&service))
                .await
                .map(|_| 0)
        }
        Cmd::Relocate { service, to, lock } => {
            // Never fight the cluster manager: it would move the service back.
            if let Some(id) = ocf::pacemaker_resource(&service).map_err(FerryError::Usage)? {
                return Err(FerryError::Usage(format!(
                    "'{service}' is managed by Pacemaker as resource '{id}': move it through \
                     the cluster (crm_resource --move -r {id} -N {to}, then crm_resource --clear -r {id})"
                )));
            }
            let wait = lock.wait_ms()?;
            let h = Helper::connect().await?;
            let cfg = h.config(&service).await?;
            let node = h.node_name().await?;
            // relocate takes the lock itself: where it can depends on the mode.
            relocate::relocate(&h, &cfg, &node, &to, wait, &Log::new(&service))
                .await
                .map(|_| 0)
        }
        Cmd::ReceiveConfig { service } => {
            let mut text = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| {
                    FerryError::Usage(format!("cannot read the config from stdin: {e}"))
                })?;
            let h = Helper::connect().await?;
            let sum = h.manager().await?.install_config(&service, &text).await?;
            println!(
                "installed {service}.conf, sha256 {}",
                &sum[..12.min(sum.len())]
            );
            Ok(0)
        }
        Cmd::Print {
            what: PrintWhat::Config { service },
        } => {
            let h = Helper::connect().await?;
            h.config(&service).await?;
            let (text, _) = h.service(&service).await?.config().await?;
            print!("{text}");
            Ok(0)
        }
        Cmd::Docker { service, rid, args } => {
            let h = Helper::connect().await?;
            docker::run(&h, &service, rid.as_deref(), args).await
        }
        Cmd::Lease {
            what: LeaseWhat::Init { service },
        } => {
            let h = Helper::connect().await?;
            let cfg = h.config(&service).await?;
            let Some(r) = cfg
                .resources
                .iter()
                .find(|r| r.kind() == config::Kind::Lease)
            else {
                return Err(FerryError::Usage(format!(
                    "service '{service}' has no [lease#…] resource"
                )));
            };
            let log = Log::new(&service);
            log.call(&r.rid, h.lease(&service, &r.rid).await?.init())
                .await?;
            Ok(0)
        }
        Cmd::Ocf { .. } => Ok(i32::from(ocf::OCF_ERR_GENERIC)),
        Cmd::Reload => {
            let h = Helper::connect().await?;
            let services = h.manager().await?.reload().await?;
            println!("services: {}", services.join(" "));
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    // `make deb` renders man pages and completions from this very Cli.
    if let Some(dir) = gen::requested() {
        return gen::run(<Cli as clap::CommandFactory>::command(), &dir);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Ocf { action } = &cli.cmd {
        return rt.block_on(ocf::run(action));
    }
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("ferry: {e}");
            i32::from(e.exit_code())
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
