//! Filesystems: check, mount, unmount.
//!
//! Mount state comes from /proc/self/mountinfo, matched by device number so
//! that a symlinked device path (`/dev/disk/by-id/…`) is recognised.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use ferry_core::config::FsConfig;
use ferry_core::dbus::CheckResult;
use ferry_core::status::{ResourceStatus, State};
use nix::mount::{umount2, MntFlags};
use zbus::message::Header;
use zbus::{interface, Connection};

use crate::cmd;
use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};

pub struct FsObject {
    pub ctx: ResCtx,
}

/// Attempts at unmounting a busy filesystem, killing its users in between.
const UMOUNT_ATTEMPTS: usize = 4;

#[derive(Debug, Clone)]
pub struct MountEntry {
    pub devno: (u32, u32),
    pub mountpoint: String,
    pub read_write: bool,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (i + 3 < b.len()
            && b[i] == b'\\'
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)))
        .then(|| {
            u16::from(b[i + 1] - b'0') * 64
                + u16::from(b[i + 2] - b'0') * 8
                + u16::from(b[i + 3] - b'0')
        })
        .and_then(|v| u8::try_from(v).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            // Both the mount's own options and, after " - fstype source",
            // the superblock's: errors=remount-ro flips only the latter.
            let sep = f.iter().position(|x| *x == "-")?;
            let super_ro = f.get(sep + 3)?.split(',').any(|o| o == "ro");
            Some(MountEntry {
                devno: (maj.parse().ok()?, min.parse().ok()?),
                mountpoint: unescape(f.get(4)?),
                read_write: f.get(5)?.split(',').any(|o| o == "rw") && !super_ro,
            })
        })
        .collect()
}

pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| HelperError::failed(format!("cannot read mountinfo: {e}")))?;
    Ok(parse_mountinfo(&text))
}

/// The block device's number, following symlinks.
fn devno(dev: &str) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(dev).ok()?;
    let rdev = meta.rdev();
    Some((libc::major(rdev), libc::minor(rdev)))
}

/// The kernel's name of a block device (`loop5`, `dm-3`), from its number.
fn kernel_name(devno: (u32, u32)) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{}:{}", devno.0, devno.1)).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// A mount of the device in a mount namespace other than the helper's.
#[derive(Debug, Clone)]
pub struct ForeignMount {
    /// `mnt:[4026…]`
    pub namespace: String,
    pub mountpoint: String,
    /// Processes in that namespace: one to enter it by, all to name.
    pub pids: Vec<i32>,
}

/// Every mount of `devno` in the other mount namespaces of this node, found
/// through the processes that live in them (`/proc/PID/mountinfo`).
pub fn foreign_mounts(devno: (u32, u32)) -> Vec<ForeignMount> {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut by_ns: std::collections::BTreeMap<String, (Vec<i32>, Vec<String>)> =
        std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if Some(&ns) == ours.as_ref() {
            continue;
        }
        let ns = ns.to_string_lossy().into_owned();
        if let Some((pids, _)) = by_ns.get_mut(&ns) {
            pids.push(pid);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let mnts: Vec<String> = parse_mountinfo(&text)
            .into_iter()
            .filter(|m| m.devno == devno)
            .map(|m| m.mountpoint)
            .collect();
        by_ns.insert(ns, (vec![pid], mnts));
    }
    by_ns
        .into_iter()
        .flat_map(|(ns, (pids, mnts))| {
            mnts.into_iter().map(move |m| ForeignMount {
                namespace: ns.clone(),
                mountpoint: m,
                pids: pids.clone(),
            })
        })
        .collect()
}

/// Is a superblock of the fs's device alive on this node, in any mount
/// namespace? For ext2/3/4 the kernel says so itself (`/sys/fs/ext4/<dev>`
/// exists exactly while it is); for other types, any mount of the device
/// in any namespace. `Some(why)` when it is.
pub fn live_here(c: &FsConfig) -> Option<String> {
    let devno = devno(&c.dev)?;
    if matches!(c.fstype.as_str(), "ext2" | "ext3" | "ext4") {
        let name = kernel_name(devno)?;
        let sys = format!("/sys/fs/ext4/{name}");
        return Path::new(&sys)
            .exists()
            .then(|| format!("{} is live on this node ({sys} exists)", c.dev));
    }
    if mounts().ok()?.iter().any(|m| m.devno == devno) {
        return Some(format!("{} is mounted here", c.dev));
    }
    foreign_mounts(devno).first().map(|f| {
        format!(
            "{} is mounted on {} in mount namespace {}",
            c.dev, f.mountpoint, f.namespace
        )
    })
}

fn describe_pids(pids: &[i32]) -> String {
    pids.iter()
        .take(5)
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let uid = std::fs::metadata(format!("/proc/{p}"))
                .map(|m| m.uid().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{p} ({}, uid {uid})", comm.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
        + if pids.len() > 5 { ", …" } else { "" }
}

/// Let go of the copies of the device's mounts that other mount namespaces
/// of this node keep (a container, `unshare -m`, a user namespace): unmount
/// them there, and where that fails (busy, or locked in a user namespace),
/// kill the processes of that namespace, as `fuser -km` does to the users
/// of the local mount. Either way the superblock must go.
async fn release_foreign_mounts(devno: (u32, u32), log: &mut Vec<String>) -> Result<()> {
    let foreign = foreign_mounts(devno);
    let mut namespaces: Vec<&str> = foreign.iter().map(|f| f.namespace.as_str()).collect();
    namespaces.dedup();
    for ns in namespaces {
        let mounts: Vec<&ForeignMount> = foreign.iter().filter(|f| f.namespace == ns).collect();
        let Some(pid) = mounts.first().and_then(|f| f.pids.first()) else {
            continue;
        };
        let pids = mounts[0].pids.clone();
        let nsarg = format!("--mount=/proc/{pid}/ns/mnt");
        let mut unmounted_all = true;
        // Deepest first: later entries sit on top of earlier ones.
        for f in mounts.iter().rev() {
            let out = cmd::run("nsenter", &[&nsarg, "--", "umount", &f.mountpoint]).await?;
            if out.code == 0 {
                log.push(format!(
                    "umount {} in mount namespace {ns} (pid {pid})",
                    f.mountpoint
                ));
            } else {
                unmounted_all = false;
            }
        }
        if unmounted_all {
            continue;
        }
        log.push(format!(
            "mount namespace {ns} keeps a copy of the mount: kill its processes {}",
            describe_pids(&pids)
        ));
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Ok(())
}

fn label(c: &FsConfig) -> String {
    format!("{}@{}", c.dev, c.mnt)
}

/// Mounts at `mnt` itself.
fn at(mounts: &[MountEntry], mnt: &str) -> Vec<MountEntry> {
    mounts
        .iter()
        .filter(|m| m.mountpoint == mnt)
        .cloned()
        .collect()
}

pub async fn status(rid: &str, c: &FsConfig) -> ResourceStatus {
    let all = match mounts() {
        Ok(m) => m,
        Err(e) => return ResourceStatus::new(rid, State::Warn, label(c)).with_comment(e.message()),
    };
    let here = at(&all, &c.mnt);
    let Some(devno) = devno(&c.dev) else {
        let s = ResourceStatus::new(rid, State::Down, label(c));
        return if here.is_empty() {
            s.with_comment(format!("device {} not found", c.dev))
        } else {
            ResourceStatus::new(rid, State::Warn, label(c)).with_comment(format!(
                "device {} not found, yet {} is mounted",
                c.dev, c.mnt
            ))
        };
    };
    match here.iter().rev().find(|m| m.devno == devno) {
        Some(m) if m.read_write => ResourceStatus::new(rid, State::Up, label(c)),
        Some(_) => {
            ResourceStatus::new(rid, State::Warn, label(c)).with_comment("mounted read-only")
        }
        None if !here.is_empty() => ResourceStatus::new(rid, State::Warn, label(c))
            .with_comment(format!("{} is mounted from another device", c.mnt)),
        // Not mounted here, yet the kernel still holds it: another mount
        // namespace keeps a copy. Not down: the disk is not let go.
        None => match live_here(c) {
            Some(why) => ResourceStatus::new(rid, State::Warn, label(c)).with_comment(why),
            None => ResourceStatus::new(rid, State::Down, label(c)),
        },
    }
}

fn config(ctx: &ResCtx) -> Result<FsConfig> {
    ctx.config().map(|(_, c)| c)
}

/// The mountpoint must be the path it says: a symlink anywhere in it (say,
/// planted in a parent filesystem) would make root mount elsewhere, and make
/// status look for the mount under the wrong name.
fn refuse_symlinked_path(mnt: &str) -> Result<()> {
    // The deepest part of the path that exists must resolve to itself.
    let mut existing = Path::new(mnt);
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(()),
        }
    }
    match std::fs::canonicalize(existing) {
        Ok(real) if real == existing => Ok(()),
        Ok(real) => Err(HelperError::failed(format!(
            "{mnt}: {} resolves to {}: refusing to mount through a symbolic link",
            existing.display(),
            real.display()
        ))),
        Err(e) => Err(HelperError::failed(format!("{mnt}: {e}"))),
    }
}

async fn mount(c: &FsConfig) -> Result<Vec<String>> {
    let Some(dev) = devno(&c.dev) else {
        return Err(HelperError::failed(format!("device {} not found", c.dev)));
    };
    let here = at(&mounts()?, &c.mnt);
    if here.iter().any(|m| m.devno == dev) {
        return Ok(vec![format!("{} is already mounted on {}", c.dev, c.mnt)]);
    }
    if !here.is_empty() {
        return Err(HelperError::Busy(format!(
            "{} is already mounted from another device",
            c.mnt
        )));
    }
    refuse_symlinked_path(&c.mnt)?;
    // A copy left in another mount namespace of this node: fsck would check
    // a live filesystem. Stopping the service cleans such copies.
    if let Some(why) = live_here(c) {
        return Err(HelperError::Busy(format!(
            "{why}, though not on {}: stop the service first, which lets go of every copy",
            c.mnt
        )));
    }
    let mut log = Vec::new();
    if !Path::new(&c.mnt).exists() {
        std::fs::create_dir_all(&c.mnt)
            .map_err(|e| HelperError::failed(format!("cannot create {}: {e}", c.mnt)))?;
        log.push(format!("create missing mountpoint {}", c.mnt));
    }
    if matches!(c.fstype.as_str(), "ext2" | "ext3" | "ext4") {
        let out = cmd::run("e2fsck", &["-p", &c.dev]).await?;
        log.push(cmd::display("e2fsck", &["-p", &c.dev]));
        // 0: clean, 1: errors corrected; anything else needs a human.
        if out.code > 1 {
            return Err(HelperError::failed(format!(
                "e2fsck -p {}: exit {}: {}{}",
                c.dev,
                out.code,
                out.stdout.trim(),
                out.stderr.trim()
            )));
        }
    }
    let mut args: Vec<&str> = vec!["-t", &c.fstype];
    if let Some(o) = &c.mnt_opt {
        args.extend(["-o", o]);
    }
    args.extend([c.dev.as_str(), c.mnt.as_str()]);
    cmd::run_ok("mount", &args).await?;
    log.push(cmd::display("mount", &args));
    Ok(log)
}

/// Unmount the filesystem until the kernel lets go of it: here, and in
/// every other mount namespace of this node. Down means no superblock of
/// the device is left on the node, not merely "not in our mount table".
pub(crate) async fn unmount(c: &FsConfig) -> Result<Vec<String>> {
    let mut log = unmount_local(c).await?;
    let Some(dev) = devno(&c.dev) else {
        return Ok(log);
    };
    if live_here(c).is_some() {
        release_foreign_mounts(dev, &mut log).await?;
        // The kernel frees the superblock once the last mount and the last
        // killed process holding one are gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while live_here(c).is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Some(why) = live_here(c) {
        let left: Vec<String> = foreign_mounts(dev)
            .iter()
            .map(|f| {
                format!(
                    "{} in {} (pids {})",
                    f.mountpoint,
                    f.namespace,
                    describe_pids(&f.pids)
                )
            })
            .collect();
        return Err(HelperError::Busy(format!(
            "{why}: the filesystem is not let go{}",
            if left.is_empty() {
                " (held by no process: an open file, a loop device, or a pinned mount namespace)"
                    .to_string()
            } else {
                format!("; still mounted: {}", left.join("; "))
            }
        )));
    }
    Ok(log)
}

/// Unmount `mnt`, everything below it, and any other mount of its device
/// in our mount namespace, deepest first. A busy mount gets its users
/// killed (`fuser -km`) and is retried, a bounded number of times.
async fn unmount_local(c: &FsConfig) -> Result<Vec<String>> {
    let mut log = Vec::new();
    let dev = devno(&c.dev);
    let below = |m: &MountEntry| {
        m.mountpoint == c.mnt
            || m.mountpoint.starts_with(&format!("{}/", c.mnt))
            || Some(m.devno) == dev
    };
    if !mounts()?.iter().any(below) {
        return Ok(vec![format!("{} is already unmounted", c.mnt)]);
    }
    for attempt in 1..=UMOUNT_ATTEMPTS {
        let mut busy = None;
        // Later entries sit on top of earlier ones: unmount in reverse order.
        // A data root that dockerd bind-mounted onto itself shows up here too.
        for m in mounts()?.iter().filter(|m| below(m)).rev() {
            let path = m.mountpoint.clone();
            let unmounted =
                tokio::task::spawn_blocking(move || umount2(path.as_str(), MntFlags::empty()))
                    .await
                    .map_err(|e| HelperError::failed(format!("umount {}: {e}", m.mountpoint)))?;
            match unmounted {
                Ok(()) => log.push(format!("umount {}", m.mountpoint)),
                Err(nix::errno::Errno::EBUSY) => {
                    busy = Some(m.mountpoint.clone());
                    break;
                }
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(HelperError::failed(format!("umount {}: {e}", m.mountpoint))),
            }
        }
        let Some(path) = busy else {
            if !mounts()?.iter().any(below) {
                return Ok(log);
            }
            continue;
        };
        if attempt == UMOUNT_ATTEMPTS {
            let users = cmd::run("fuser", &["-vm", &path])
                .await
                .map(|o| o.stderr)
                .unwrap_or_default();
            return Err(HelperError::Busy(format!(
                "{path} is still busy after {UMOUNT_ATTEMPTS} attempts: {}",
                users.trim()
            )));
        }
        let _ = cmd::run("fuser", &["-km", &path]).await?;
        log.push(format!("{path} is busy: fuser -km {path}"));
        tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
    }
    Ok(log)
}

#[interface(name = "io.ferry.Helper1.Fs")]
impl FsObject {
    async fn check(&self) -> Result<CheckResult> {
        let c = config(&self.ctx)?;
        Ok(status(&self.ctx.rid, &c).await.into_check())
    }

    /// Create a missing mountpoint, fsck (ext*), mount.
    async fn mount(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.fs.mount", || async {
            mount(&config(ctx)?).await
        })
        .await
    }

    /// Unmount the filesystem and anything mounted below it.
    async fn unmount(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>> {
        let ctx = &self.ctx;
        ctx.privileged(conn, &header, "io.ferry.fs.unmount", || async {
            unmount(&config(ctx)?).await
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
            m.insert("dev".into(), c.dev);
            m.insert("mnt".into(), c.mnt);
            m.insert("type".into(), c.fstype);
            if let Some(o) = c.mnt_opt {
                m.insert("mnt_opt".into(), o);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_mountpoints_are_refused() {
        let tmp = std::env::temp_dir().join(format!("ferry-fs-test-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("real")).expect("tmp dir");
        let base = std::fs::canonicalize(&tmp).expect("canonical tmp");
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).expect("symlink");
        let path = |p: &str| base.join(p).display().to_string();
        // judged by the deepest part that exists
        assert!(refuse_symlinked_path(&path("real/not-yet/mnt")).is_ok());
        assert!(refuse_symlinked_path(&path("real")).is_ok());
        assert!(refuse_symlinked_path(&path("link/not-yet/mnt")).is_err());
        assert!(refuse_symlinked_path(&path("link")).is_err());
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "22 1 7:3 / /srv/busy\\040box rw,relatime shared:1 - ext4 /dev/loop3 rw\n\
                    23 22 7:3 /docker /srv/busy\\040box/docker ro,relatime - ext4 /dev/loop3 rw\n\
                    24 1 7:4 / /srv/x rw,relatime - ext4 /dev/loop4 ro,errors=remount-ro\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mountpoint, "/srv/busy box");
        assert_eq!(m[0].devno, (7, 3));
        assert!(m[0].read_write);
        assert!(!m[1].read_write);
        assert!(
            !m[2].read_write,
            "a superblock remounted read-only is not writable"
        );
        // an escape beyond a byte stays as it is, without overflowing
        assert_eq!(unescape("/a\\777b"), "/a\\777b");
    }
}
