//! Volume groups: ownership by host tag, activation, and optional SCSI-3
//! persistent reservations.
//!
//! The reservation path (sg_persist) cannot run on the development machines
//! (no SCSI devices, no device-mapper); it is the real code path, untested
//! here, and only runs when the config says `scsireserv = true`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

#[derive(Clone, Debug, PartialEq)]
struct VgState {
    tags: Vec<String>,
    lv_count: u32,
    lv_active: u32,
    /// The device-mapper names of the active logical volumes.
    active_dm: Vec<String>,
}

/// What the helper last read of a volume group, or set itself, and the
/// fingerprint of its on-disk metadata then (see [`metadata_fingerprint`]).
struct Known {
    state: VgState,
    pvs: Vec<String>,
    print: u64,
    at: Instant,
}

/// How long a known state is trusted, even while its fingerprint holds.
const KNOWN_MAX_AGE: Duration = Duration::from_secs(30);

static KNOWN: Mutex<Vec<(String, Known)>> = Mutex::new(Vec::new());

fn known() -> std::sync::MutexGuard<'static, Vec<(String, Known)>> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forget what is known of `vg`: the next read asks LVM.
pub fn forget(vg: &str) {
    known().retain(|(n, _)| n != vg);
}

/// The VG's state: what the helper knows, while its metadata on disk has
/// not changed since (one direct read of each PV's metadata header, tens of
/// microseconds) and every LV it saw active still is; LVM otherwise.
async fn vg_state(vg: &str) -> Result<VgState> {
    let cached = known()
        .iter()
        .find(|(n, k)| n == vg && k.at.elapsed() < KNOWN_MAX_AGE)
        .map(|(_, k)| (k.state.clone(), k.pvs.clone(), k.print));
    if let Some((state, pvs, print)) = cached {
        let still = tokio::task::spawn_blocking(move || {
            metadata_fingerprint(&pvs) == Some(print)
                && state
                    .active_dm
                    .iter()
                    .all(|d| std::path::Path::new("/dev/mapper").join(d).exists())
        })
        .await
        .unwrap_or(false);
        if still {
            if let Some((_, k)) = known().iter().find(|(n, _)| n == vg) {
                return Ok(k.state.clone());
            }
        }
    }
    vg_state_from_lvm(vg).await
}

/// Ask LVM (`vgs`, and `lvs` when the VG has logical volumes), and keep
/// the answer with its metadata fingerprint.
async fn vg_state_from_lvm(vg: &str) -> Result<VgState> {
    let out = cmd::run_ok(
        "vgs",
        &[
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "vg_tags,lv_count,pv_name",
            vg,
        ],
    )
    .await?;
    let mut tags = Vec::new();
    let mut lv_count = 0;
    let mut pvs = Vec::new();
    // One line per PV, the VG's fields repeated.
    for line in out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut f = line.split('|');
        tags = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        lv_count = f.next().unwrap_or("0").trim().parse().unwrap_or(0);
        if let Some(pv) = f.next().map(str::trim).filter(|p| !p.is_empty()) {
            pvs.push(pv.to_string());
        }
    }
    let mut active_dm = Vec::new();
    if lv_count > 0 {
        let out = cmd::run_ok(
            "lvs",
            &[
                "--noheadings",
                "--separator",
                "|",
                "-o",
                "lv_name,lv_active",
                vg,
            ],
        )
        .await?;
        for line in out.stdout.lines() {
            if let Some((lv, active)) = line.trim().split_once('|') {
                if active.trim() == "active" {
                    active_dm.push(dm_name(vg, lv.trim()));
                }
            }
        }
    }
    let state = VgState {
        tags,
        lv_count,
        lv_active: active_dm.len() as u32,
        active_dm,
    };
    let p = pvs.clone();
    let print = tokio::task::spawn_blocking(move || metadata_fingerprint(&p))
        .await
        .ok()
        .flatten();
    forget(vg);
    if let Some(print) = print {
        known().push((
            vg.to_string(),
            Known {
                state: state.clone(),
                pvs,
                print,
                at: Instant::now(),
            },
        ));
    }
    Ok(state)
}

/// After a tag change of ours: the tags as we set them, with the metadata
/// fingerprint read right after our own write. (Under the lease no other
/// ferry node writes this VG's metadata.)
async fn note_tags(vg: &str, tags: Vec<String>) {
    let Some(pvs) = known()
        .iter()
        .find(|(n, _)| n == vg)
        .map(|(_, k)| k.pvs.clone())
    else {
        return;
    };
    let p = pvs.clone();
    let print = tokio::task::spawn_blocking(move || metadata_fingerprint(&p))
        .await
        .ok()
        .flatten();
    let mut k = known();
    match (print, k.iter_mut().find(|(n, _)| n == vg)) {
        (Some(print), Some((_, entry))) => {
            entry.state.tags = tags;
            entry.print = print;
            entry.at = Instant::now();
        }
        _ => k.retain(|(n, _)| n != vg),
    }
}

/// The device-mapper name LVM gives `vg/lv` (dashes doubled).
fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// A hash of the LVM metadata area header of every PV, read past the page
/// cache (another node may have written it): it changes with every
/// metadata commit, wherever it was made. `None` when any cannot be read
/// or parsed: then nothing is trusted from memory.
fn metadata_fingerprint(pvs: &[String]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if pvs.is_empty() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for pv in pvs {
        mda_header(pv)?.hash(&mut h);
    }
    Some(h.finish())
}

/// The first 512 bytes of the PV's first metadata area (its header, with
/// the location and checksum of the current metadata).
fn mda_header(pv: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(pv)
        .ok()?;
    // O_DIRECT wants an aligned buffer.
    let mut raw = vec![0u8; 2 * BLOCK];
    let skip = raw.as_ptr().align_offset(BLOCK);
    let buf = raw.get_mut(skip..skip + BLOCK)?;
    f.read_exact_at(buf, 0).ok()?;
    let mda = mda_offset(buf)?;
    let aligned = mda - mda % BLOCK as u64;
    f.read_exact_at(buf, aligned).ok()?;
    let at = (mda - aligned) as usize;
    buf.get(at..at + 512).map(<[u8]>::to_vec)
}

/// Where the first metadata area starts, from the LVM2 label in one of the
/// first four sectors (`block`: the first 4 KiB of the PV).
fn mda_offset(block: &[u8]) -> Option<u64> {
    let u64_at = |b: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
    };
    for sector in 0..4 {
        let label = block.get(sector * 512..(sector + 1) * 512)?;
        if label.get(0..8)? != b"LABELONE" || label.get(24..32)? != b"LVM2 001" {
            continue;
        }
        let off = u32::from_le_bytes(label.get(20..24)?.try_into().ok()?) as usize;
        // pv_header: uuid (32), device size (8), then the data areas and the
        // metadata areas, each list of (offset, size) ended by zeros.
        let mut i = sector * 512 + off + 40;
        while u64_at(block, i)? != 0 {
            i += 16;
        }
        i += 16;
        return u64_at(block, i).filter(|&o| o != 0);
    }
    None
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
        if let Err(e) = vgchange(&mut log, &args).await {
            forget(&c.vgname);
            return Err(e);
        }
        note_tags(&c.vgname, vec![node.to_string()]).await;
    }
    Ok(log)
}

/// Drop this node's tag. vgchange accepts removing an absent tag, so there
/// is no read first: one LVM command (~45 ms) less on every stop.
pub(crate) async fn untag(node: &str, c: &VgConfig) -> Result<Vec<String>> {
    let mut log = Vec::new();
    let before = known()
        .iter()
        .find(|(n, _)| *n == c.vgname)
        .map(|(_, k)| k.state.tags.clone());
    if let Err(e) = vgchange(&mut log, &["--deltag", node, &c.vgname]).await {
        forget(&c.vgname);
        return Err(e);
    }
    match before {
        Some(tags) => note_tags(&c.vgname, tags.into_iter().filter(|t| t != node).collect()).await,
        None => forget(&c.vgname),
    }
    Ok(log)
}

pub(crate) async fn activate(c: &VgConfig, on: bool) -> Result<Vec<String>> {
    // A VG without logical volumes has nothing to (de)activate: no LVM
    // command when the helper knows that (its metadata unchanged since).
    let known_empty = known()
        .iter()
        .any(|(n, k)| *n == c.vgname && k.state.lv_count == 0);
    if known_empty && vg_state(&c.vgname).await.is_ok_and(|s| s.lv_count == 0) {
        let verb = if on { "activate" } else { "deactivate" };
        return Ok(vec![format!(
            "{} has no logical volume: nothing to {verb} (vgchange -a {} skipped)",
            c.vgname,
            if on { "y" } else { "n" }
        )]);
    }
    let mut log = Vec::new();
    let done = vgchange(&mut log, &["-a", if on { "y" } else { "n" }, &c.vgname]).await;
    // Which LVs are active changed: read it again next time (a VG without
    // LVs has nothing to activate, and its metadata did not change).
    let no_lvs = known()
        .iter()
        .any(|(n, k)| *n == c.vgname && k.state.lv_count == 0);
    if done.is_err() || !no_lvs {
        forget(&c.vgname);
    }
    done.map(|()| log)
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
    /// This resource's line of the service's status, as of now, from
    /// cheap checks (see crate::status_cache).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A PV's first 4 KiB as pvcreate writes it: the label in sector 1, one
    /// data area at 1 MiB, one metadata area at 4 KiB.
    fn pv_block(mda: u64) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let l = 512;
        b[l..l + 8].copy_from_slice(b"LABELONE");
        b[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes());
        b[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
        b[l + 24..l + 32].copy_from_slice(b"LVM2 001");
        let h = l + 32 + 40;
        b[h..h + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        // (terminator of the data areas at h + 16: zeros)
        b[h + 32..h + 40].copy_from_slice(&mda.to_le_bytes());
        b[h + 40..h + 48].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b
    }

    #[test]
    fn the_metadata_area_is_found_from_the_label() {
        assert_eq!(mda_offset(&pv_block(4096)), Some(4096));
        assert_eq!(mda_offset(&pv_block(0)), None);
        assert_eq!(mda_offset(&[0u8; 4096]), None);
        assert_eq!(mda_offset(&[0u8; 100]), None);
    }

    #[test]
    fn device_mapper_names_double_the_dashes() {
        assert_eq!(dm_name("vg-a", "lv-b"), "vg--a-lv--b");
        assert_eq!(dm_name("vgbusybox", "data"), "vgbusybox-data");
    }

    #[test]
    fn no_physical_volume_no_fingerprint() {
        assert_eq!(metadata_fingerprint(&[]), None);
        assert_eq!(
            metadata_fingerprint(&["/nonexistent/ferry-pv".to_string()]),
            None
        );
    }
}
