//! `ferry ocf ACTION`: ferry as an OCF resource agent (`ocf:ferry:service`),
//! so that Pacemaker restarts a service elsewhere when its node dies. The
//! shell file in `/usr/lib/ocf/resource.d/ferry/service` only execs this.
//!
//! Pacemaker runs agents as root, on the local node: every action goes to
//! this node's helper (root callers pass polkit; every call is audited).
//! `monitor` is exact, as the OCF contract needs it to be: 7 ("not
//! running") only when nothing of the service is left on this node, so
//! that Pacemaker never starts a second copy while a first one lingers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferry_core::config::ServiceConfig;
use ferry_core::dbus::errors;
use ferry_core::status::{ResourceStatus, State, CONFIG_RID, IMAGE_DRIFT};

use crate::client::Helper;
use crate::error::FerryError;
use crate::log::Log;

/// OCF exit codes (resource-agent API).
pub const OCF_SUCCESS: u8 = 0;
pub const OCF_ERR_GENERIC: u8 = 1;
pub const OCF_ERR_UNIMPLEMENTED: u8 = 3;
pub const OCF_ERR_INSTALLED: u8 = 5;
pub const OCF_ERR_CONFIGURED: u8 = 6;
pub const OCF_NOT_RUNNING: u8 = 7;

const META_DATA: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="service" version="1.0">
<version>1.0</version>
<longdesc lang="en">
A ferry service (address, sanlock lease, volume groups, filesystems, and
containers run by a private docker daemon on the shared storage), started,
stopped and monitored on this node through the ferry-helper. monitor returns
7 only when nothing of the service is left on this node (no address, no
lease, no superblock of its filesystems in any mount namespace, no daemon),
and 1 when the service is partly up, so that Pacemaker recovers or fences
instead of starting a second copy.
</longdesc>
<shortdesc lang="en">ferry service</shortdesc>
<parameters>
<parameter name="service" unique="1" required="1">
<longdesc lang="en">
The ferry service name: the file /etc/ferry/services/NAME.conf, the same on
every node of the service.
</longdesc>
<shortdesc lang="en">ferry service name</shortdesc>
<content type="string" default="" />
</parameter>
</parameters>
<actions>
<action name="start" timeout="180s" />
<action name="stop" timeout="180s" />
<action name="monitor" timeout="30s" interval="10s" depth="0" />
<action name="validate-all" timeout="30s" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>
"#;

/// Where the service stands on this node, judged from every resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Every resource is up.
    Running,
    /// Nothing of it is left here.
    Stopped,
    /// Anything in between: the resources that say so.
    Partial(Vec<String>),
}

/// Up, down, or neither, for one resource, as far as *this node* is
/// concerned (a lease held by another node is "down here"). A container
/// that runs, only not the image its config names now, is up: a restart
/// cannot change that, so failing the monitor would make Pacemaker loop.
fn here(r: &ResourceStatus) -> Option<bool> {
    match r.state_here() {
        State::Up => Some(true),
        State::Down | State::NotApplicable => Some(false),
        State::Warn if only_image_drift(r) => Some(true),
        _ => None,
    }
}

/// A running container's warning that is only about its image.
fn only_image_drift(r: &ResourceStatus) -> bool {
    r.rid.starts_with("container#")
        && !r.comments.is_empty()
        && r.comments.iter().all(|c| c.starts_with(IMAGE_DRIFT))
}

/// What the status says that the monitor does not judge by, but an
/// operator should read in Pacemaker's log: image drift, a config file the
/// helper no longer trusts (it runs the service with its last good config).
pub fn notes(statuses: &[ResourceStatus]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| s.rid == CONFIG_RID || only_image_drift(s))
        .map(|s| format!("{} {}: {}", s.rid, s.state, s.comments.join("; ")))
        .collect()
}

pub fn presence(statuses: &[ResourceStatus]) -> Presence {
    let (mut up, mut down, mut odd) = (0, 0, Vec::new());
    // Not a resource: the config is judged by the helper, which keeps a
    // running service's last good one.
    for s in statuses.iter().filter(|s| s.rid != CONFIG_RID) {
        match here(s) {
            Some(true) => up += 1,
            Some(false) => down += 1,
            None => odd.push(format!(
                "{} {}{}",
                s.rid,
                s.state,
                s.comments
                    .first()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            )),
        }
    }
    if !odd.is_empty() || (up > 0 && down > 0) {
        if odd.is_empty() {
            odd = statuses
                .iter()
                .filter(|s| s.rid != CONFIG_RID)
                .map(|s| format!("{} {}", s.rid, s.state))
                .collect();
        }
        Presence::Partial(odd)
    } else if up > 0 {
        Presence::Running
    } else {
        Presence::Stopped
    }
}

fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

/// The agent's one entry point: parameters from the OCF environment.
pub async fn run(action: &str) -> ExitCode {
    match action {
        "meta-data" => {
            print!("{META_DATA}");
            return code(OCF_SUCCESS);
        }
        "start" | "stop" | "monitor" | "validate-all" => {}
        other => {
            eprintln!("ocf:ferry:service: action '{other}' is not implemented");
            return code(OCF_ERR_UNIMPLEMENTED);
        }
    }
    let Some(service) = std::env::var("OCF_RESKEY_service")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!("ocf:ferry:service: the parameter 'service' is not set");
        // A probe of an unconfigured resource is "not running" on OCF's terms.
        return code(if action == "monitor" {
            OCF_NOT_RUNNING
        } else {
            OCF_ERR_CONFIGURED
        });
    };
    let h = match Helper::connect().await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ocf:ferry:service: {e}");
            return code(helper_down(action));
        }
    };
    // Does the helper run the service here? It keeps a service loaded (with
    // its last good config if its file went bad) while anything of it is up
    // here, so "not loaded" means nothing of it is here.
    let loaded = match h.services().await {
        Ok(names) => names.contains(&service),
        Err(e) => {
            eprintln!("ocf:ferry:service: {e}");
            return code(match e {
                FerryError::HelperDown(_) => helper_down(action),
                _ => OCF_ERR_GENERIC,
            });
        }
    };
    if !loaded {
        eprintln!(
            "ocf:ferry:service: the helper has no valid config of '{service}' on this node \
             (see `ferry validate` and the helper's log)"
        );
        if is_probe() {
            eprintln!("ocf:ferry:service: (a probe: '{service}' cannot run here)");
        }
        return code(match action {
            // Nothing of it can be up here: not running, nothing to stop.
            "monitor" => OCF_NOT_RUNNING,
            "stop" => OCF_SUCCESS,
            _ => OCF_ERR_CONFIGURED,
        });
    }
    let cfg = match h.config(&service).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ocf:ferry:service: {e}");
            return code(OCF_ERR_GENERIC);
        }
    };
    let node = match h.node_name().await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ocf:ferry:service: {e}");
            return code(OCF_ERR_GENERIC);
        }
    };
    if matches!(action, "start" | "stop") {
        // Pacemaker's start and stop must not fail on a lock an idle client
        // holds (a failed stop means fencing): wait, then break it.
        if let Err(e) = take_lock(&h, &service).await {
            eprintln!("ocf:ferry:service: {action} of '{service}': {e}");
            return code(OCF_ERR_GENERIC);
        }
    }
    match action {
        "validate-all" => {
            if cfg.nodes.contains(&node) {
                code(OCF_SUCCESS)
            } else {
                eprintln!(
                    "ocf:ferry:service: {node} is not one of the nodes of '{service}' ({})",
                    cfg.nodes.join(" ")
                );
                code(OCF_ERR_CONFIGURED)
            }
        }
        "monitor" => code(monitor(&h, &cfg).await),
        "start" => code(start(&h, &cfg, &node).await),
        _ => code(stop(&h, &cfg).await),
    }
}

/// No helper on the bus: "not installed" is true for a start or a
/// validation; a monitor or a stop cannot tell what runs here, so they
/// fail rather than say "not running".
fn helper_down(action: &str) -> u8 {
    match action {
        "monitor" | "stop" => OCF_ERR_GENERIC,
        _ => OCF_ERR_INSTALLED,
    }
}

/// How long one BreakLock call waits for the holder before breaking an
/// idle one.
const BREAK_WAIT_MS: u32 = 5_000;

/// Take the service's lock for this process, breaking an idle holder's;
/// a holder in the middle of an action is waited for until the
/// operation's timeout (less a margin) runs out.
async fn take_lock(h: &Helper, service: &str) -> Result<(), FerryError> {
    let deadline = Instant::now() + op_timeout().saturating_sub(LOCK_MARGIN);
    let proxy = h.service(service).await?;
    loop {
        match proxy.break_lock(BREAK_WAIT_MS).await {
            Ok(()) => return Ok(()),
            Err(zbus::Error::MethodError(name, msg, _))
                if name.as_str() == errors::LOCKED && Instant::now() < deadline =>
            {
                eprintln!(
                    "ocf:ferry:service: waiting for the lock of '{service}': {}",
                    msg.unwrap_or_default()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The operation's timeout (`OCF_RESKEY_CRM_meta_timeout`, ms); zero when
/// there is none (by hand, ocf-tester).
fn op_timeout() -> Duration {
    let ms = std::env::var("OCF_RESKEY_CRM_meta_timeout")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// What a start or stop needs besides waiting for a lock, within its timeout.
const LOCK_MARGIN: Duration = Duration::from_secs(30);

async fn monitor(h: &Helper, cfg: &ServiceConfig) -> u8 {
    let statuses = match h.service(&cfg.name).await {
        Ok(s) => s.status().await,
        Err(e) => {
            eprintln!("ocf:ferry:service: {e}");
            return OCF_ERR_GENERIC;
        }
    };
    match statuses {
        Ok(st) => match presence(&st) {
            Presence::Running => {
                for n in notes(&st) {
                    eprintln!("ocf:ferry:service: '{}' runs; note: {n}", cfg.name);
                }
                OCF_SUCCESS
            }
            Presence::Stopped => OCF_NOT_RUNNING,
            Presence::Partial(why) => {
                eprintln!(
                    "ocf:ferry:service: '{}' is partly up here: {}",
                    cfg.name,
                    why.join("; ")
                );
                OCF_ERR_GENERIC
            }
        },
        Err(e) => {
            eprintln!("ocf:ferry:service: status of '{}': {e}", cfg.name);
            OCF_ERR_GENERIC
        }
    }
}

async fn start(h: &Helper, cfg: &ServiceConfig, node: &str) -> u8 {
    if monitor(h, cfg).await == OCF_SUCCESS {
        return OCF_SUCCESS;
    }
    // After a node dies (and is fenced), its sanlock lease frees itself only
    // after 8 x io_timeout + 60 s: wait for it within the start timeout
    // Pacemaker gave us, rather than fail at once and get banned from the
    // only node left. Anything else fails at once.
    let deadline = start_deadline();
    loop {
        match crate::action::start(h, cfg, node, &[], &Log::new(&cfg.name)).await {
            Ok(()) => break,
            Err(e) if lease_held(&e) && Instant::now() + LEASE_RETRY < deadline => {
                eprintln!(
                    "ocf:ferry:service: start of '{}' waits for the lease: {e}",
                    cfg.name
                );
                tokio::time::sleep(LEASE_RETRY).await;
            }
            Err(e) => {
                eprintln!("ocf:ferry:service: start of '{}' failed: {e}", cfg.name);
                return OCF_ERR_GENERIC;
            }
        }
    }
    match monitor(h, cfg).await {
        OCF_SUCCESS => OCF_SUCCESS,
        _ => OCF_ERR_GENERIC,
    }
}

/// Pacemaker's probe: a monitor with interval 0.
fn is_probe() -> bool {
    std::env::var("OCF_RESKEY_CRM_meta_interval").is_ok_and(|i| i == "0")
}

/// How often a start that found the lease held by another node tries again.
const LEASE_RETRY: Duration = Duration::from_secs(2);

/// Until when a start may wait for the lease: the operation's timeout
/// (`OCF_RESKEY_CRM_meta_timeout`, in ms) less a margin for the start
/// itself; now when there is none (a start by hand, ocf-tester).
fn start_deadline() -> Instant {
    let timeout_ms = std::env::var("OCF_RESKEY_CRM_meta_timeout")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    Instant::now() + Duration::from_millis(timeout_ms).saturating_sub(START_MARGIN)
}

/// What a start needs besides the wait for the lease, within its timeout.
const START_MARGIN: Duration = Duration::from_secs(20);

/// The helper refused the lease because another host holds it.
fn lease_held(e: &FerryError) -> bool {
    matches!(e, FerryError::Failed(m) if m.contains("LeaseHeld"))
}

async fn stop(h: &Helper, cfg: &ServiceConfig) -> u8 {
    if monitor(h, cfg).await == OCF_NOT_RUNNING {
        return OCF_SUCCESS;
    }
    if let Err(e) = crate::action::stop(h, cfg, &[], &Log::new(&cfg.name)).await {
        eprintln!("ocf:ferry:service: stop of '{}' failed: {e}", cfg.name);
        return OCF_ERR_GENERIC;
    }
    // Stopped means nothing left here; anything else must make Pacemaker
    // fence this node rather than start the service elsewhere.
    match monitor(h, cfg).await {
        OCF_NOT_RUNNING => OCF_SUCCESS,
        _ => OCF_ERR_GENERIC,
    }
}

/// The Pacemaker resource that manages `service` on this cluster, if any:
/// `ferry relocate` must not move such a service behind the cluster's back.
/// `Err` when Pacemaker runs on this node but its CIB cannot be read (only
/// root and `haclient` may): the caller cannot tell, and must not guess.
pub fn pacemaker_resource(service: &str) -> Result<Option<String>, String> {
    // /usr/sbin is not in an ordinary user's PATH.
    let bin = ["/usr/sbin/cibadmin", "/usr/bin/cibadmin"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("cibadmin");
    let out = std::process::Command::new(bin)
        .args(["--query", "--scope", "resources"])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            Ok(find_primitive(&String::from_utf8_lossy(&o.stdout), service))
        }
        // Not running here (or not installed): the CIB's socket is not there.
        _ if !cib_listening() => Ok(None),
        _ => Err(format!(
            "Pacemaker runs on this node, but its CIB cannot be read here (root and members of \
             haclient only), so ferry cannot tell whether it manages '{service}': run this as \
             root, or move the service with crm_resource --move"
        )),
    }
}

/// pacemaker-based listens on the abstract socket `@cib_ro` (libqb), which
/// any user sees in this network namespace's /proc/net/unix (the kernel
/// shows the name's trailing NUL padding as `@`).
fn cib_listening() -> bool {
    std::fs::read_to_string("/proc/net/unix")
        .map(|t| t.lines().any(is_cib_ro))
        .unwrap_or(false)
}

fn is_cib_ro(line: &str) -> bool {
    line.split_whitespace()
        .nth(7)
        .is_some_and(|p| p.trim_end_matches('@') == "@cib_ro")
}

/// In a CIB `resources` section, the id of the `ocf:ferry:service`
/// primitive whose `service` parameter is `service`.
fn find_primitive(cib: &str, service: &str) -> Option<String> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        Some(tag[start..].split('"').next()?.to_string())
    };
    for chunk in cib.split("<primitive ").skip(1) {
        let head = chunk.split('>').next().unwrap_or("");
        if attr(head, "provider").as_deref() != Some("ferry")
            || attr(head, "type").as_deref() != Some("service")
        {
            continue;
        }
        let body = chunk.split("</primitive>").next().unwrap_or("");
        let managed = body.split("<nvpair ").skip(1).any(|nv| {
            attr(nv, "name").as_deref() == Some("service")
                && attr(nv, "value").as_deref() == Some(service)
        });
        if managed {
            return attr(head, "id");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(rid: &str, state: &str, comments: &[&str]) -> ResourceStatus {
        ResourceStatus {
            rid: rid.into(),
            state: state.into(),
            label: String::new(),
            comments: comments.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn monitor_is_exact() {
        let all = |a: &str, b: &str, c2: &str| {
            vec![
                st("ip#1", a, &[]),
                st("lease#1", b, &[]),
                st("fs#1", c2, &[]),
            ]
        };
        assert_eq!(presence(&all("up", "up", "up")), Presence::Running);
        assert_eq!(presence(&all("down", "down", "down")), Presence::Stopped);
        // the address removed by hand while the disk is still mounted
        assert!(matches!(
            presence(&all("down", "up", "up")),
            Presence::Partial(_)
        ));
        // not mounted here, but a copy lives in another mount namespace
        let copy = vec![
            st("ip#1", "down", &[]),
            st("lease#1", "down", &[]),
            st("fs#1", "warn", &["/dev/loop8 is live on this node"]),
        ];
        assert!(matches!(presence(&copy), Presence::Partial(_)));
        // a passive node: the lease is held by the other node
        let passive = vec![
            st("ip#1", "down", &[]),
            st("lease#1", "warn", &["held by n2 (host_id 2)"]),
            st("fs#1", "down", &[]),
        ];
        assert_eq!(presence(&passive), Presence::Stopped);
        // but an orphaned lease of this node is not "stopped"
        let orphan = vec![
            st("ip#1", "down", &[]),
            st(
                "lease#1",
                "warn",
                &["orphaned: this node's host id holds it, no helper process does"],
            ),
            st("fs#1", "down", &[]),
        ];
        assert!(matches!(presence(&orphan), Presence::Partial(_)));
    }

    #[test]
    fn image_drift_and_a_kept_config_do_not_fail_the_monitor() {
        let drift = |c: &str| {
            vec![
                st("ip#1", "up", &[]),
                st("fs#1", "up", &[]),
                st("container#1", "warn", &[c]),
            ]
        };
        let d = drift("image drift: local/busybox:date now names another image");
        assert_eq!(presence(&d), Presence::Running);
        assert_eq!(notes(&d).len(), 1);
        // any other container warning is not "running"
        assert!(matches!(
            presence(&drift("docker daemon did not answer within 5 s")),
            Presence::Partial(_)
        ));
        // a service run with its last good config is judged by its resources
        let mut kept = vec![st("ip#1", "up", &[]), st("fs#1", "up", &[])];
        kept.push(st(
            CONFIG_RID,
            "warn",
            &["mode 664: writable by group or others; running with the last good config"],
        ));
        assert_eq!(presence(&kept), Presence::Running);
        assert!(notes(&kept)[0].contains("last good config"));
        let mut down = vec![st("ip#1", "down", &[]), st("fs#1", "down", &[])];
        down.push(st(CONFIG_RID, "warn", &["x"]));
        assert_eq!(presence(&down), Presence::Stopped);
        // a failed vgs is neither up nor down
        let vgs = vec![
            st("ip#1", "down", &[]),
            st("vg#1", "warn", &["cannot tell: vgs failed"]),
        ];
        assert!(matches!(presence(&vgs), Presence::Partial(_)));
    }

    #[test]
    fn sees_the_cib_socket() {
        assert!(is_cib_ro(
            "00000000326e5dc1: 00000002 00000000 00010000 0001 01 1040313 @cib_ro@@@@@@@@"
        ));
        assert!(!is_cib_ro(
            "00000000326e5dc1: 00000002 00000000 00010000 0001 01 1040313 @cib_rw@@@@@@@@"
        ));
        assert!(!is_cib_ro(
            "00000000326e5dc1: 00000002 00000000 00010000 0001 01 1040313"
        ));
    }

    #[test]
    fn finds_the_managing_primitive() {
        let cib = r#"<resources>
  <primitive id="web" class="ocf" provider="heartbeat" type="apache"/>
  <primitive id="bb" class="ocf" provider="ferry" type="service">
    <instance_attributes id="bb-ia"><nvpair id="bb-s" name="service" value="busybox"/></instance_attributes>
  </primitive>
</resources>"#;
        assert_eq!(find_primitive(cib, "busybox").as_deref(), Some("bb"));
        assert_eq!(find_primitive(cib, "other"), None);
    }

    #[test]
    fn meta_data_names_the_parameter_and_actions() {
        for needle in [
            "<parameter name=\"service\" unique=\"1\" required=\"1\">",
            "<action name=\"monitor\"",
            "<action name=\"validate-all\"",
            "<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">",
        ] {
            assert!(META_DATA.contains(needle), "{needle}");
        }
    }
}
