//! Volume groups: ownership by host tag, activation, and optional SCSI-3
//! persistent reservations.
//!
//! The reservation path (sg_persist) cannot run on the development machines
//! (no SCSI devices, no device-mapper); it is the real code path, untested
//! here, and only runs when the config says `scsireserv = true`.

use std::collections::HashMap;

use ferry_core::config::VgConfig;
use ferry_core::dbus::CheckResult;
use ferry_core::status::{ResourceStatus, State};
use zbus::message::Header;
use zbus::{interface, Connection};

use crate::cmd;
use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};

pub struct VgObject {
    pub ctx: ResCtx,
}

/// SCSI-3 reservation type "Write Exclusive – Registrants Only".
const PROUT_TYPE: &str = "5";

struct VgState {
    tags: Vec<String>,
    lv_count: u32,
    lv_active: u32,
}

async fn vg_state(vg: &str) -> Result<VgState> {
    let out = cmd::run_ok(
        "vgs",
        &[
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "vg_tags,lv_count",
            vg,
        ],
    )
    .await?;
    let line = out.stdout.lines().next().unwrap_or("").trim().to_string();
    let (tags, count) = line.split_once('|').unwrap_or(("", "0"));
    let tags = tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let lv_count = count.trim().parse().unwrap_or(0);
    let lv_active = if lv_count > 0 {
        let out = cmd::run_ok("lvs", &["--noheadings", "-o", "lv_active", vg]).await?;
        out.stdout.lines().filter(|l| l.trim() == "active").count() as u32
    } else {
        0
    };
    Ok(VgState {
        tags,
        lv_count,
        lv_active,
    })
}

pub async fn status(node: &str, rid: &str, c: &VgConfig) -> ResourceStatus {
    let st = match vg_state(&c.vgname).await {
        Ok(s) => s,
        // A failed vgs says nothing of whether the VG is ours and active:
        // reading that as down would let a start elsewhere go ahead.
        Err(e) => {
            return ResourceStatus::new(rid, State::Warn, &c.vgname)
                .with_comment(format!("cannot tell: {}", e.message()))
        }
    };
    let ours = st.tags.iter().any(|t| t == node);
    let others: Vec<&String> = st.tags.iter().filter(|t| *t != node).collect();
    let mut s = if ours && st.lv_active == st.lv_count {
        ResourceStatus::new(rid, State::Up, &c.vgname)
    } else if ours {
        ResourceStatus::new(rid, State::Warn, &c.vgname).with_comment(format!(
            "{} of {} logical volumes active",
            st.lv_active, st.lv_count
        ))
    } else if st.lv_active > 0 {
        ResourceStatus::new(rid, State::Warn, &c.vgname)
            .with_comment("logical volumes active without this node's tag")
    } else {
        ResourceStatus::new(rid, State::Down, &c.vgname)
    };
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
        s = s.with_comment(format!("tagged by {}", names.join(", ")));
    }
    s
}

fn config(ctx: &ResCtx) -> Result<VgConfig> {
    ctx.config().map(|(_, c)| c)
}

async fn vgchange(log: &mut Vec<String>, args: &[&str]) -> Result<()> {
    cmd::run_ok("vgchange", args).await?;
    log.push(cmd::display("vgchange", args));
    Ok(())
}

/// Does this node hold the volume group: its tag, or any active LV?
pub async fn held_here(node: &str, c: &VgConfig) -> Result<bool> {
    let st = vg_state(&c.vgname).await?;
    Ok(st.tags.iter().any(|t| t == node) || st.lv_active > 0)
}

/// The tags on the volume group.
pub async fn tags(vg: &str) -> Result<Vec<String>> {
    Ok(vg_state(vg).await?.tags)
}

/// Take ownership: drop other nodes' tags and add ours, in one vgchange.
/// Taking the volume group over is allowed only once this node holds the
/// address and the lease (`guard`).
async fn tag(node: &str, c: &VgConfig) -> Result<Vec<String>> {
    let st = vg_state(&c.vgname).await?;
    let foreign: Vec<&String> = st.tags.iter().filter(|t| *t != node).collect();
    let mut args: Vec<&str> = Vec::new();
    for t in &foreign {
        args.extend(["--deltag", t.as_str()]);
    }
    if !st.tags.iter().any(|t| t == node) {
        args.extend(["--addtag", node]);
    }
    let mut log = Vec::new();
    if args.is_empty() {
        log.push(format!("{} is already tagged {node}", c.vgname));
    } else {
        args.push(&c.vgname);
        vgchange(&mut log, &args).await?;
    }
    Ok(log)
}

/// Drop this node's tag. vgchange accepts removing an absent tag, so there
/// is no read first: one LVM command (~45 ms) less on every stop.
pub(crate) async fn untag(node: &str, c: &VgConfig) -> Result<Vec<String>> {
    let mut log = Vec::new();
    vgchange(&mut log, &["--deltag", node, &c.vgname]).await?;
    Ok(log)
}

pub(crate) async fn activate(c: &VgConfig, on: bool) -> Result<Vec<String>> {
    let mut log = Vec::new();
    vgchange(&mut log, &["-a", if on { "y" } else { "n" }, &c.vgname]).await?;
    Ok(log)
}

/// This node's reservation key: from its node name, not gethostid(), which
/// on Debian without /etc/hostid derives from 127.0.1.1 and is the same on
/// every node (no fencing at all).
fn host_key(node: &str) -> String {
    format!("0x{}", &ferry_core::config::checksum(node)[..16])
}

async fn physical_volumes(vg: &str) -> Result<Vec<String>> {
    let out = cmd::run_ok("vgs", &["--noheadings", "-o", "pv_name", vg]).await?;
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The key holding the reservation on `dev`, if any.
async fn holder(dev: &str) -> Result<Option<String>> {
    let out = cmd::run_ok("sg_persist", &["--in", "--read-reservation", dev]).await?;
    Ok(out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Key=").map(|k| k.trim().to_string())))
}

async fn reserve(node: &str, c: &VgConfig, force: bool) -> Result<Vec<String>> {
    if !c.scsireserv {
        return Ok(vec![format!("scsireserv is off for {}", c.vgname)]);
    }
    let key = host_key(node);
    let mut log = Vec::new();
    for dev in physical_volumes(&c.vgname).await? {
        let register = ["--out", "--register-ignore", "--param-sark", &key, &dev];
        cmd::run_ok("sg_persist", &register).await?;
        log.push(cmd::display("sg_persist", &register));
        match holder(&dev).await? {
            Some(h) if h == key => log.push(format!("{dev} is already reserved by {key}")),
            Some(other) if !force => {
                return Err(HelperError::Busy(format!(
                "{dev} is reserved by key {other}: another node holds it (use --force to preempt)"
            )))
            }
            Some(other) => {
                let args = [
                    "--out",
                    "--preempt-abort",
                    "--param-rk",
                    &key,
                    "--param-sark",
                    &other,
                    "--prout-type",
                    PROUT_TYPE,
                    &dev,
                ];
                cmd::run_ok("sg_persist", &args).await?;
                log.push(cmd::display("sg_persist", &args));
            }
            None => {
                let args = [
                    "--out",
                    "--reserve",
                    "--param-rk",
                    &key,
                    "--prout-type",
                    PROUT_TYPE,
                    &dev,
                ];
                cmd::run_ok("sg_persist", &args).await?;
                log.push(cmd::display("sg_persist", &args));
            }
        }
    }
    Ok(log)
}

async fn release(node: &str, c: &VgConfig) -> Result<Vec<String>> {
    if !c.scsireserv {
        return Ok(vec![format!("scsireserv is off for {}", c.vgname)]);
    }
    let key = host_key(node);
    let mut log = Vec::new();
    for dev in physical_volumes(&c.vgname).await? {
        if holder(&dev).await?.as_deref() == Some(key.as_str()) {
            let args = [
                "--out",
                "--release",
                "--param-rk",
                &key,
                "--prout-type",
                PROUT_TYPE,
                &dev,
            ];
            cmd::run_ok("sg_persist", &args).await?;
            log.push(cmd::display("sg_persist", &args));
        }
        let unregister = ["--out", "--register", "--param-rk", &key, &dev];
        cmd::run_ok("sg_persist", &unregister).await?;
        log.push(cmd::display("sg_persist", &unregister));
    }
    Ok(log)
}

#[interface(name = "io.ferry.Helper1.Vg")]
impl VgObject {
    /// This resource's line of the service's status (recent, not fresh, for
    /// callers without a stake: see crate::status_cache).
    async fn check(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<CheckResult> {
        Ok(self.ctx.check(conn, &header).await?.into_check())
    }

    /// Drop other nodes' host tags and add this node's.
    async fn tag(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.vg.tag", || async {
            tag(ctx.reg.node(), &config(ctx)?).await
        })
        .await
    }

    async fn untag(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.vg.untag", || async {
            untag(ctx.reg.node(), &config(ctx)?).await
        })
        .await
    }

    async fn activate(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.vg.activate", || async {
            activate(&config(ctx)?, true).await
        })
        .await
    }

    async fn deactivate(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.vg.deactivate", || async {
            activate(&config(ctx)?, false).await
        })
        .await
    }

    /// SCSI-3 persistent reservation of the VG's disks (scsireserv = true
    /// only); `force` preempts another node's key.
    async fn reserve(
        &self,
        force: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        // Preempting another node's reservation is a forced takeover: its
        // own action, so that rules can keep it from everyday operators.
        let action = if force {
            "io.ferry.vg.preempt"
        } else {
            "io.ferry.vg.reserve"
        };
        ctx.privileged(conn, &header, action, || async {
            reserve(ctx.reg.node(), &config(ctx)?, force).await
        })
        .await
    }

    async fn release(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.vg.release", || async {
            release(ctx.reg.node(), &config(ctx)?).await
        })
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
            m.insert("vgname".into(), c.vgname);
            m.insert("scsireserv".into(), c.scsireserv.to_string());
        }
        m
    }
}
