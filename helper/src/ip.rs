//! The service address: probe the wire, add, announce, remove.
//!
//! The free-address probe lives inside `Add` rather than being left to the
//! caller: it is the first guard against running a service on two nodes, and
//! a `busctl` caller cannot skip it.
//!
//! For a service with a lease, `Lease.Claim` takes the lease and then starts
//! the probe of every address here in the background ([`start_claim_probes`]),
//! so that it runs while the storage comes up; `Add` then waits for that
//! probe's verdict instead of probing again (guard.rs, rule 2).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::config::{IpConfig, ResourceConfig, ServiceConfig};
use ferry_core::dbus::CheckResult;
use ferry_core::status::{ResourceStatus, State};
use nix::ifaddrs::getifaddrs;
use zbus::message::Header;
use zbus::{interface, Connection};

use crate::arp;
use crate::cmd;
use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};

pub struct IpObject {
    pub ctx: ResCtx,
}

fn label(c: &IpConfig) -> String {
    format!("{}@{}", c.ipname, c.ipdev)
}

/// The configured name as an IPv4 address (a name is resolved by this node).
pub async fn resolve(ipname: &str) -> Result<Ipv4Addr> {
    if let Ok(ip) = ipname.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(_) => Err(HelperError::InvalidConfig(format!(
                "{ipname}: IPv6 service addresses are not supported yet"
            ))),
        };
    }
    let name = ipname.to_string();
    let found = tokio::task::spawn_blocking(move || (name.as_str(), 0).to_socket_addrs())
        .await
        .map_err(|e| HelperError::failed(e.to_string()))?
        .map_err(|e| HelperError::failed(format!("cannot resolve {ipname}: {e}")))?;
    found
        .filter_map(|sa| match sa.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| HelperError::failed(format!("{ipname} has no IPv4 address")))
}

fn device_exists(dev: &str) -> bool {
    nix::net::if_::if_nametoindex(dev).is_ok()
}

/// The IPv4 addresses on `dev`, with their prefix lengths.
fn addresses(dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let addrs = getifaddrs().map_err(|e| HelperError::failed(format!("getifaddrs: {e}")))?;
    Ok(addrs
        .filter(|a| a.interface_name == dev)
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            let prefix = a
                .netmask
                .and_then(|m| {
                    m.as_sockaddr_in()
                        .map(|m| u32::from(m.ip()).count_ones() as u8)
                })
                .unwrap_or(32);
            Some((ip, prefix))
        })
        .collect())
}

fn prefix_for(c: &IpConfig, addr: Ipv4Addr) -> Result<u8> {
    if let Some(p) = c.netmask {
        return Ok(p);
    }
    addresses(&c.ipdev)?
        .into_iter()
        .find(|(a, _)| *a != addr)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            HelperError::InvalidConfig(format!(
                "netmask is not set and {} has no IPv4 address to take its prefix from",
                c.ipdev
            ))
        })
}

pub async fn status(rid: &str, c: &IpConfig) -> ResourceStatus {
    let addr = match resolve(&c.ipname).await {
        Ok(a) => a,
        Err(e) => return ResourceStatus::new(rid, State::Warn, label(c)).with_comment(e.message()),
    };
    if !device_exists(&c.ipdev) {
        return ResourceStatus::new(rid, State::Down, label(c))
            .with_comment(format!("no device {}", c.ipdev));
    }
    match addresses(&c.ipdev) {
        Ok(list) if list.iter().any(|(a, _)| *a == addr) => {
            ResourceStatus::new(rid, State::Up, label(c))
        }
        Ok(_) => ResourceStatus::new(rid, State::Down, label(c)),
        Err(e) => ResourceStatus::new(rid, State::Warn, label(c)).with_comment(e.message()),
    }
}

fn config(ctx: &ResCtx) -> Result<IpConfig> {
    ctx.config().map(|(_, c)| c)
}

fn require_device(ctx: &ResCtx, c: &IpConfig) -> Result<()> {
    if device_exists(&c.ipdev) {
        Ok(())
    } else {
        Err(HelperError::failed(format!(
            "no device {} on {}",
            c.ipdev,
            ctx.reg.node()
        )))
    }
}

/// What a probe started by `Lease.Claim` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Running,
    /// Nobody answered within the window; `ran`: how long it took.
    Free {
        ended: Instant,
        ran: Duration,
    },
    /// Another host answers for the address (the message says who).
    InUse(String),
    /// The probe itself failed (no device, socket error).
    Failed(String),
}

/// A passed probe older than this is not trusted for `Add`: it probes again.
const CLAIM_PROBE_FRESH: Duration = Duration::from_secs(5);

type ProbeWatch = tokio::sync::watch::Receiver<Probe>;

/// The probes started by `Lease.Claim`, by (service, rid). In memory only:
/// a helper that restarts forgets them, and the guards then want the
/// address up again, as without a lease.
static CLAIMED: Mutex<Vec<(String, String, ProbeWatch)>> = Mutex::new(Vec::new());

fn claimed() -> std::sync::MutexGuard<'static, Vec<(String, String, ProbeWatch)>> {
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the free-address probe of every address of `svc` that is not up
/// here, in the background (called by `Lease.Claim` once the lease is held).
pub fn start_claim_probes(svc: &ServiceConfig) {
    forget_claim(&svc.name);
    for r in &svc.resources {
        let ResourceConfig::Ip(c) = &r.config else {
            continue;
        };
        let (tx, rx) = tokio::sync::watch::channel(Probe::Running);
        claimed().push((svc.name.clone(), r.rid.clone(), rx));
        let c = c.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let verdict = match claim_probe(&c).await {
                Ok(None) => Probe::Free {
                    ended: Instant::now(),
                    ran: t0.elapsed(),
                },
                Ok(Some(in_use)) => Probe::InUse(in_use),
                Err(e) => Probe::Failed(e.message().to_string()),
            };
            // Nobody listens any more when the claim was forgotten meanwhile.
            let _ = tx.send(verdict);
        });
    }
}

/// One address's probe: `Some(why)` when another host answers.
async fn claim_probe(c: &IpConfig) -> Result<Option<String>> {
    let addr = resolve(&c.ipname).await?;
    if !device_exists(&c.ipdev) {
        return Err(HelperError::failed(format!("no device {}", c.ipdev)));
    }
    if addresses(&c.ipdev)?.iter().any(|(a, _)| *a == addr) {
        return Ok(None);
    }
    probe_wire(c, addr).await
}

/// The probe's state for one address of a service, `None` when no claim
/// started one (or it was consumed or forgotten).
pub fn claim_state(service: &str, rid: &str) -> Option<Probe> {
    claimed()
        .iter()
        .find(|(s, r, _)| s == service && r == rid)
        .map(|(_, _, w)| w.borrow().clone())
}

/// Wait for the claim's probe of this address to end; `None`: there is none.
async fn claim_verdict(service: &str, rid: &str) -> Option<Probe> {
    let mut w = claimed()
        .iter()
        .find(|(s, r, _)| s == service && r == rid)
        .map(|(_, _, w)| w.clone())?;
    let v = w.wait_for(|p| *p != Probe::Running).await.ok()?.clone();
    Some(v)
}

/// Drop every probe of a claim on `service` (the lease went, or the
/// address was added or removed): none of it may be relied on any more.
pub fn forget_claim(service: &str) {
    claimed().retain(|(s, _, _)| s != service);
}

fn forget_claim_of(service: &str, rid: &str) {
    claimed().retain(|(s, r, _)| !(s == service && r == rid));
}

/// Probe the wire for `addr`: `Some(why)` when another host answers.
async fn probe_wire(c: &IpConfig, addr: Ipv4Addr) -> Result<Option<String>> {
    let window = Duration::from_millis(u64::from(c.probe_ms));
    let dev = c.ipdev.clone();
    let answer = tokio::task::spawn_blocking(move || arp::probe(&dev, addr, window))
        .await
        .map_err(|e| HelperError::failed(e.to_string()))?
        .map_err(|e| HelperError::failed(format!("ARP probe on {}: {e}", c.ipdev)))?;
    Ok(answer.map(|mac| {
        format!(
            "{addr} is in use on the wire (answered by {mac} on {}): the service may be running on another node",
            c.ipdev
        )
    }))
}

async fn add(ctx: &ResCtx) -> Result<Vec<String>> {
    let c = config(ctx)?;
    let addr = resolve(&c.ipname).await?;
    require_device(ctx, &c)?;
    if addresses(&c.ipdev)?.iter().any(|(a, _)| *a == addr) {
        forget_claim_of(&ctx.service, &ctx.rid);
        return Ok(vec![format!("{addr} is already up on {}", c.ipdev)]);
    }
    let prefix = prefix_for(&c, addr)?;
    let called = Instant::now();
    let mut log = Vec::new();
    // The probe a claim started while the storage came up, when recent
    // enough; otherwise probe now.
    let verdict = claim_verdict(&ctx.service, &ctx.rid).await;
    forget_claim_of(&ctx.service, &ctx.rid);
    match verdict {
        Some(Probe::Free { ended, ran }) if ended.elapsed() < CLAIM_PROBE_FRESH => {
            let waited = called.elapsed().as_millis();
            let ago = ended.elapsed().as_millis();
            log.push(format!(
                "checking {addr} availability: free, the claim's probe saw no answer in {} ms \
                 (probe ran {} ms, ended {ago} ms ago; waited {waited} ms for it)",
                c.probe_ms,
                ran.as_millis()
            ));
        }
        Some(Probe::InUse(why)) => return Err(HelperError::AddressInUse(why)),
        Some(Probe::Failed(why)) => {
            return Err(HelperError::failed(format!(
                "the free-address probe of {addr} failed: {why}"
            )))
        }
        _ => {
            log.push(format!("checking {addr} availability"));
            if let Some(why) = probe_wire(&c, addr).await? {
                return Err(HelperError::AddressInUse(why));
            }
        }
    }
    let cidr = format!("{addr}/{prefix}");
    let args = ["addr", "add", cidr.as_str(), "dev", c.ipdev.as_str()];
    cmd::run_ok("ip", &args).await?;
    log.push(cmd::display("ip", &args));
    Ok(log)
}

async fn announce(ctx: &ResCtx) -> Result<Vec<String>> {
    let c = config(ctx)?;
    let addr = resolve(&c.ipname).await?;
    require_device(ctx, &c)?;
    if !addresses(&c.ipdev)?.iter().any(|(a, _)| *a == addr) {
        return Err(HelperError::failed(format!(
            "{addr} is not up on {}: nothing to announce",
            c.ipdev
        )));
    }
    let dev = c.ipdev.clone();
    tokio::task::spawn_blocking(move || arp::announce(&dev, addr))
        .await
        .map_err(|e| HelperError::failed(e.to_string()))?
        .map_err(|e| HelperError::failed(format!("ARP announce on {}: {e}", c.ipdev)))?;
    Ok(vec![format!("gratuitous arp for {addr} on {}", c.ipdev)])
}

pub(crate) async fn remove(ctx: &ResCtx) -> Result<Vec<String>> {
    let c = config(ctx)?;
    forget_claim_of(&ctx.service, &ctx.rid);
    let addr = resolve(&c.ipname).await?;
    if !device_exists(&c.ipdev) {
        return Ok(vec![format!(
            "{addr} is already down (no device {})",
            c.ipdev
        )]);
    }
    let Some((_, prefix)) = addresses(&c.ipdev)?.into_iter().find(|(a, _)| *a == addr) else {
        return Ok(vec![format!("{addr} is already down on {}", c.ipdev)]);
    };
    let cidr = format!("{addr}/{prefix}");
    let args = ["addr", "del", cidr.as_str(), "dev", c.ipdev.as_str()];
    cmd::run_ok("ip", &args).await?;
    // The address must be gone from this node, or a start elsewhere would
    // bring it up twice.
    if addresses(&c.ipdev)?.iter().any(|(a, _)| *a == addr) {
        return Err(HelperError::failed(format!(
            "{addr} is still up on {} after removal",
            c.ipdev
        )));
    }
    Ok(vec![cmd::display("ip", &args)])
}

#[interface(name = "io.ferry.Helper1.Ip")]
impl IpObject {
    /// `(state, label, comments)`.
    async fn check(&self) -> Result<CheckResult> {
        let c = config(&self.ctx)?;
        Ok(status(&self.ctx.rid, &c).await.into_check())
    }

    /// Probe the wire for the address (AddressInUse when another host
    /// answers), then add it to the device.
    async fn add(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.ip.add", || add(ctx))
            .await
    }

    /// Send a gratuitous ARP for the address.
    async fn announce(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.ip.announce", || announce(ctx))
            .await
    }

    async fn remove(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.ip.remove", || remove(ctx))
            .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn rid(&self) -> String {
        self.ctx.rid.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn settings(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Ok(c) = config(&self.ctx) {
            m.insert("ipdev".into(), c.ipdev);
            m.insert("ipname".into(), c.ipname);
            if let Some(n) = c.netmask {
                m.insert("netmask".into(), n.to_string());
            }
            m.insert("probe_ms".into(), c.probe_ms.to_string());
        }
        m
    }
}
