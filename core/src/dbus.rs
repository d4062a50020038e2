//! The helper's D-Bus names, object paths, error names, and client proxies.
//!
//! The helper implements these interfaces; the frontend (and any other tool)
//! calls them through the proxies below. Integration tests drive the helper
//! through these proxies, so the two cannot drift apart unnoticed.

use std::collections::HashMap;

use crate::status::ResourceStatus;
use zbus::proxy;
use zbus::OwnedFd;

pub const BUS_NAME: &str = "io.ferry.Helper1";
pub const ROOT_PATH: &str = "/io/ferry/Helper1";
pub const MANAGER_IFACE: &str = "io.ferry.Helper1.Manager";
pub const SERVICE_IFACE: &str = "io.ferry.Helper1.Service";
pub const ERROR_PREFIX: &str = "io.ferry.Helper1.Error";

/// Named errors of the helper, as `io.ferry.Helper1.Error.<name>`.
pub mod errors {
    pub const NOT_AUTHORIZED: &str = "io.ferry.Helper1.Error.NotAuthorized";
    pub const UNKNOWN_SERVICE: &str = "io.ferry.Helper1.Error.UnknownService";
    pub const INVALID_ARGUMENT: &str = "io.ferry.Helper1.Error.InvalidArgument";
    pub const INVALID_CONFIG: &str = "io.ferry.Helper1.Error.InvalidConfig";
    pub const ADDRESS_IN_USE: &str = "io.ferry.Helper1.Error.AddressInUse";
    pub const LEASE_HELD: &str = "io.ferry.Helper1.Error.LeaseHeld";
    pub const OUT_OF_ORDER: &str = "io.ferry.Helper1.Error.OutOfOrder";
    pub const DAEMON_NOT_RUNNING: &str = "io.ferry.Helper1.Error.DaemonNotRunning";
    pub const BUSY: &str = "io.ferry.Helper1.Error.Busy";
    pub const FAILED: &str = "io.ferry.Helper1.Error.Failed";
    /// Another caller holds the service lock; the message names it.
    pub const LOCKED: &str = "io.ferry.Helper1.Error.Locked";
    /// The caller's lock was broken (Service.BreakLock) while it was idle;
    /// the message says by whom and when.
    pub const LOCK_BROKEN: &str = "io.ferry.Helper1.Error.LockBroken";
}

/// The polkit action of `Service.Lock`.
pub const LOCK_ACTION: &str = "io.ferry.service.lock";
/// The polkit action of `Service.BreakLock`.
pub const BREAK_LOCK_ACTION: &str = "io.ferry.service.break-lock";
/// The polkit action of `Manager.Reload`.
pub const RELOAD_ACTION: &str = "io.ferry.config.reload";

/// Escape a name into one object path element: `[A-Za-z0-9]` stay, every
/// other byte becomes `_xx` (hex), as systemd does. `ip#1` → `ip_231`.
pub fn escape_path_element(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

pub fn service_path(service: &str) -> String {
    format!("{ROOT_PATH}/service/{}", escape_path_element(service))
}

pub fn resource_path(service: &str, rid: &str) -> String {
    format!("{}/{}", service_path(service), escape_path_element(rid))
}

/// The interface name for a resource kind (`ip` → `io.ferry.Helper1.Ip`).
pub fn resource_iface(kind: crate::config::Kind) -> &'static str {
    match kind {
        crate::config::Kind::Ip => "io.ferry.Helper1.Ip",
        crate::config::Kind::Lease => "io.ferry.Helper1.Lease",
        crate::config::Kind::Vg => "io.ferry.Helper1.Vg",
        crate::config::Kind::Fs => "io.ferry.Helper1.Fs",
        crate::config::Kind::Container => "io.ferry.Helper1.Container",
    }
}

/// The polkit action a mutating method checks.
pub fn action_id(kind: &str, verb: &str) -> String {
    format!("io.ferry.{kind}.{verb}")
}

/// `(state, label, comments)` as every resource's Check returns it.
pub type CheckResult = (String, String, Vec<String>);

#[proxy(
    interface = "io.ferry.Helper1.Manager",
    default_service = "io.ferry.Helper1",
    default_path = "/io/ferry/Helper1"
)]
pub trait Manager {
    /// The services this node has a config for.
    fn list_services(&self) -> zbus::Result<Vec<String>>;
    /// Re-read the config directory; returns the services now known.
    fn reload(&self) -> zbus::Result<Vec<String>>;
    /// Validate `text` and install it atomically as the config of `service`.
    /// Returns the checksum of what is now installed.
    fn install_config(&self, service: &str, text: &str) -> zbus::Result<String>;
    #[zbus(property)]
    fn node_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "io.ferry.Helper1.Service",
    default_service = "io.ferry.Helper1"
)]
pub trait Service {
    /// Every resource's status, in start order.
    fn status(&self) -> zbus::Result<Vec<ResourceStatus>>;
    /// The config text and its checksum.
    fn config(&self) -> zbus::Result<(String, String)>;
    /// Forget what the helper knows of the service's VGs and containers:
    /// the next Status asks LVM and dockerd.
    fn refresh(&self) -> zbus::Result<()>;
    /// Take the service's lock for this connection, waiting up to `wait_ms`
    /// for another holder (error `Locked` naming it). Held until Unlock or
    /// until this connection leaves the bus. Polkit action
    /// `io.ferry.service.lock`.
    fn lock(&self, wait_ms: u32) -> zbus::Result<()>;
    /// Release this connection's lock (no-op when it holds none).
    fn unlock(&self) -> zbus::Result<()>;
    /// Take the service's lock like `lock`; when another connection still
    /// holds it after `wait_ms` and is idle (no call running, none for a
    /// moment), break its lock (audited; its next call fails with
    /// `LockBroken`). A holder in the middle of a call keeps it: `Locked`.
    /// Polkit action `io.ferry.service.break-lock`.
    fn break_lock(&self, wait_ms: u32) -> zbus::Result<()>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn nodes(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn checksum(&self) -> zbus::Result<String>;
    /// Resource ids in start order.
    #[zbus(property)]
    fn resources(&self) -> zbus::Result<Vec<String>>;
}

#[proxy(
    interface = "io.ferry.Helper1.Ip",
    default_service = "io.ferry.Helper1"
)]
pub trait Ip {
    fn check(&self) -> zbus::Result<CheckResult>;
    /// Probe the wire, add the address, announce it. Fails with AddressInUse
    /// when another host answers for it.
    fn add(&self) -> zbus::Result<Vec<String>>;
    fn announce(&self) -> zbus::Result<Vec<String>>;
    fn remove(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn rid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn settings(&self) -> zbus::Result<HashMap<String, String>>;
}

/// The service's sanlock disk lease.
#[proxy(
    interface = "io.ferry.Helper1.Lease",
    default_service = "io.ferry.Helper1"
)]
pub trait Lease {
    /// `(state, label, comments)`: up = held here, down = free, warn = held
    /// by another node (named in the comments).
    fn check(&self) -> zbus::Result<CheckResult>;
    /// Write a fresh lockspace and resource lease on the area. Refused while
    /// any node holds the lease or the lockspace is in use.
    fn init(&self) -> zbus::Result<Vec<String>>;
    /// Take the lease (persistent, refused at once when another node holds
    /// it).
    fn acquire(&self) -> zbus::Result<Vec<String>>;
    /// Take the lease before the address (refused like Acquire), then probe
    /// the service's addresses in the background while the storage comes
    /// up; Ip.Add adds an address only once that probe passed.
    fn claim(&self) -> zbus::Result<Vec<String>>;
    /// Give the lease back: refused while anything of the service on shared
    /// storage is still up on this node.
    fn release(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn rid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn settings(&self) -> zbus::Result<HashMap<String, String>>;
}

#[proxy(
    interface = "io.ferry.Helper1.Vg",
    default_service = "io.ferry.Helper1"
)]
pub trait Vg {
    fn check(&self) -> zbus::Result<CheckResult>;
    fn tag(&self) -> zbus::Result<Vec<String>>;
    fn untag(&self) -> zbus::Result<Vec<String>>;
    fn activate(&self) -> zbus::Result<Vec<String>>;
    fn deactivate(&self) -> zbus::Result<Vec<String>>;
    fn reserve(&self, force: bool) -> zbus::Result<Vec<String>>;
    fn release(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn rid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn settings(&self) -> zbus::Result<HashMap<String, String>>;
}

#[proxy(
    interface = "io.ferry.Helper1.Fs",
    default_service = "io.ferry.Helper1"
)]
pub trait Fs {
    fn check(&self) -> zbus::Result<CheckResult>;
    fn mount(&self) -> zbus::Result<Vec<String>>;
    fn unmount(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn rid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn settings(&self) -> zbus::Result<HashMap<String, String>>;
}

#[proxy(
    interface = "io.ferry.Helper1.Container",
    default_service = "io.ferry.Helper1"
)]
pub trait Container {
    fn check(&self) -> zbus::Result<CheckResult>;
    /// Starts the service's private containerd ahead of dockerd (no wait).
    fn prepare_daemon(&self) -> zbus::Result<Vec<String>>;
    fn start_daemon(&self) -> zbus::Result<Vec<String>>;
    /// Stops the service's private daemon when it runs no container any more.
    fn stop_daemon(&self) -> zbus::Result<Vec<String>>;
    fn start(&self) -> zbus::Result<Vec<String>>;
    fn stop(&self) -> zbus::Result<Vec<String>>;
    /// Run an allowed docker subcommand against the service's daemon with the
    /// caller's stdio; returns its exit status.
    fn docker(
        &self,
        args: Vec<String>,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> zbus::Result<i32>;
    #[zbus(property)]
    fn rid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn settings(&self) -> zbus::Result<HashMap<String, String>>;
}

/// docker subcommands the helper runs for a caller: reading state, fetching
/// images and attaching. Anything that could start a process with new
/// privileges (run, exec, create, cp, …) is left out on purpose.
pub const DOCKER_ALLOWED: &[&str] = &[
    "ps", "images", "image", "pull", "load", "import", "attach", "logs", "inspect", "top", "stats",
    "version", "info", "port", "diff", "history", "events", "wait",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_path_safe() {
        assert_eq!(escape_path_element("ip#1"), "ip_231");
        assert_eq!(escape_path_element("busybox"), "busybox");
        assert_eq!(escape_path_element("a.b-c"), "a_2eb_2dc");
        assert_eq!(
            resource_path("busybox", "fs#1"),
            "/io/ferry/Helper1/service/busybox/fs_231"
        );
        for s in ["ip#1", "a.b-c", "", "x/y"] {
            assert!(
                zbus::ObjectPath::try_from(resource_path(s, s)).is_ok(),
                "{s}"
            );
        }
    }
}
