//! Taking over the lease of a holder the cluster has fenced, at once instead
//! of after sanlock's expiry (8 x io_timeout + 60 s, DESIGN §13).
//!
//! A start refused at the lease may take it over when, and only when:
//! 1. the resource leader on disk names an owner (host_id, generation) that
//!    `[peer NAME] host_id` in ferry.conf maps to a node;
//! 2. the cluster's fencing history (`stonith_admin --history NODE
//!    --verbose`) holds a successful `off` or `reboot` of that node whose
//!    completion second S (whole seconds, floored) is at or after the
//!    instant this node saw its last renewal;
//! 3. the owner's host (delta) lease on disk still carries the owner's
//!    generation and the very timestamp this node's daemon last saw: a node
//!    that renewed since, or rejoined the lockspace (a new generation), is
//!    alive and is not treated as fenced.
//!
//! "Saw": the helper's own watch (`watch_holders`) reads each
//! held-elsewhere lease's holder's delta lease every 250 ms (O_DIRECT, CRC
//! checked) and keeps the wall-clock end of the read that first showed its
//! current (generation, timestamp). Why that is safe: the renewal wrote
//! that timestamp no later than our read, the fence completed no earlier
//! than S, so S >= the read puts the power-off after the renewal; and rule
//! 3 says no renewal came after it. The fencer's and this node's wall
//! clocks are assumed in step (NTP) to well under the ~1 s margin a real
//! fence leaves. Without a record (the helper just started), the bound is
//! sanlock's `last_live` (whole monotonic seconds, read only at the
//! daemon's own renewals: up to 2 x io_timeout + 1 s late, so a fence that
//! close is "cannot tell" and the start waits for the expiry).
//!
//! The helper checks all of it itself, never on a caller's word. It then
//! frees that host's delta lease as sanlock 3.8's `sanlock direct
//! release_id` does (timestamp 0, generation kept, checksum redone) and the
//! caller acquires again: sanlock itself grants a lease whose owner's host
//! lease is free (paxos_lease.c). sanlock >= 4.2 has a supported call for
//! this (`sanlock_set_host(SANLK_SET_HOST_DEAD_EXT)`); 3.8 does not, and
//! sanlock(8) calls release_id "only for testing or manual recovery". The
//! write here is a compare-and-write of that one sector: it refuses unless
//! the sector still reads exactly as checked. See README, "Failover".
//!
//! Without a cluster, without a successful fence, or on any doubt (a
//! command that fails, a record that does not parse), nothing is written:
//! the start fails as before and the lease frees itself at expiry.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::config::{LeaseConfig, ResourceConfig, ServiceConfig};
use tracing::{info, warn};

use crate::audit::{Outcome, Record};
use crate::error::{HelperError, Result};
use crate::registry::Registry;

// ------------------------------------------------------- sanlock on disk

/// `struct leader_record` (sanlock leader.h), little-endian on disk, at the
/// start of its sector: the same layout for a host's delta lease and a
/// resource's paxos leader.
const DELTA_DISK_MAGIC: u32 = 0x1221_2010;
const PAXOS_DISK_MAGIC: u32 = 0x0615_2010;
const OFF_MAGIC: usize = 0;
const OFF_SECTOR_SIZE: usize = 12;
const OFF_OWNER_ID: usize = 32;
const OFF_OWNER_GENERATION: usize = 40;
const OFF_SPACE_NAME: usize = 56;
const OFF_TIMESTAMP: usize = 152;
/// The checksum covers the record up to the checksum field itself.
const LEADER_CHECKSUM_LEN: usize = 168;
const OFF_CHECKSUM: usize = 168;
/// sizeof(struct leader_record): sanlock writes this much of the sector and
/// zeroes the rest.
const LEADER_RECORD_LEN: usize = 200;
const NAME_LEN: usize = 48;
/// O_DIRECT needs aligned buffers and offsets; the largest sector sanlock
/// supports (4 KiB) fits every case.
const IO_ALIGN: usize = 4096;

/// One leader record as read from disk, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub owner_id: u64,
    pub generation: u64,
    /// The writer's own monotonic seconds; 0 = free.
    pub timestamp: u64,
    sector_size: usize,
    /// The sector as read (exactly `sector_size` bytes).
    raw: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// sanlock's checksum: CRC-32C (Castagnoli, reflected), seeded with ~1, no
/// final xor (crc32c.c, paxos_lease.c leader_checksum).
fn leader_checksum(b: &[u8]) -> u32 {
    let mut crc: u32 = !1;
    for &byte in &b[..LEADER_CHECKSUM_LEN] {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// Parse and check one leader record: magic, checksum, lockspace name.
fn parse_leader(raw: &[u8], magic: u32, lockspace: &str) -> std::result::Result<Leader, String> {
    if raw.len() < 512 {
        return Err("short read".into());
    }
    if le32(raw, OFF_MAGIC) != magic {
        return Err(format!("magic {:#x}, not {magic:#x}", le32(raw, OFF_MAGIC)));
    }
    let stored = le32(raw, OFF_CHECKSUM);
    if leader_checksum(raw) != stored {
        return Err("checksum mismatch".into());
    }
    let name = &raw[OFF_SPACE_NAME..OFF_SPACE_NAME + NAME_LEN];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN)];
    if name != lockspace.as_bytes() {
        return Err(format!(
            "lockspace {:?}, not {lockspace}",
            String::from_utf8_lossy(name)
        ));
    }
    let sector_size = le32(raw, OFF_SECTOR_SIZE) as usize;
    if ![512, 4096].contains(&sector_size) {
        return Err(format!("sector size {sector_size}"));
    }
    Ok(Leader {
        owner_id: le64(raw, OFF_OWNER_ID),
        generation: le64(raw, OFF_OWNER_GENERATION),
        timestamp: le64(raw, OFF_TIMESTAMP),
        sector_size,
        raw: raw[..sector_size.min(raw.len())].to_vec(),
    })
}

/// The sector sanlock's delta_lease_release writes for `l`: the record with
/// timestamp 0 (free) and a new checksum, the rest of the sector zero.
fn released(l: &Leader) -> Vec<u8> {
    let mut s = vec![0u8; l.sector_size];
    s[..LEADER_RECORD_LEN].copy_from_slice(&l.raw[..LEADER_RECORD_LEN]);
    s[OFF_TIMESTAMP..OFF_TIMESTAMP + 8].copy_from_slice(&0u64.to_le_bytes());
    s[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&0u32.to_le_bytes());
    let sum = leader_checksum(&s);
    s[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    s
}

/// A buffer O_DIRECT accepts.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> std::io::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len, IO_ALIGN)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: len > 0 (callers pass a sector size or more).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        Ok(Aligned { ptr, len })
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to len initialized bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len, IO_ALIGN) {
            // SAFETY: allocated with this layout in new().
            unsafe { std::alloc::dealloc(self.ptr, layout) }
        }
    }
}

fn open_direct(dev: &str, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT | if write { libc::O_DSYNC } else { 0 })
        .open(dev)
}

fn read_sector(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Aligned::new(len.max(IO_ALIGN))?;
    f.read_exact_at(buf.as_mut(), offset)?;
    Ok(buf.as_mut()[..len].to_vec())
}

/// The lockspace's and the resource's places on the lease disk.
#[derive(Debug, Clone)]
struct Area {
    lockspace: String,
    dev: String,
    ls_offset: u64,
    res_offset: u64,
}

impl Area {
    fn of(svc: &ServiceConfig) -> Option<(String, Area)> {
        svc.resources.iter().find_map(|r| match &r.config {
            ResourceConfig::Lease(c) => Some((
                r.rid.clone(),
                Area {
                    lockspace: LeaseConfig::lockspace(&svc.name),
                    dev: c.dev.clone(),
                    ls_offset: c.offset,
                    res_offset: c.resource_offset(),
                },
            )),
            _ => None,
        })
    }

    /// The resource leader: who owns the lease (timestamp 0: nobody).
    fn read_owner(&self, f: &File) -> std::io::Result<std::result::Result<Leader, String>> {
        let raw = read_sector(f, self.res_offset, IO_ALIGN)?;
        Ok(parse_leader(&raw, PAXOS_DISK_MAGIC, &self.lockspace))
    }

    /// Where host `host_id`'s delta lease is (sector host_id - 1 of the
    /// lockspace, in the sector size host 1's record gives), and that size.
    fn host_place(
        &self,
        f: &File,
        host_id: u64,
    ) -> std::io::Result<std::result::Result<(u64, usize), String>> {
        let first = read_sector(f, self.ls_offset, IO_ALIGN)?;
        let place = parse_leader(&first, DELTA_DISK_MAGIC, &self.lockspace)
            .map(|l| {
                let at = self.ls_offset + (host_id - 1) * l.sector_size as u64;
                (at, l.sector_size)
            })
            .map_err(|e| format!("host 1's lease: {e}"));
        Ok(place)
    }

    /// Host `host_id`'s delta lease.
    fn read_host(
        &self,
        f: &File,
        host_id: u64,
    ) -> std::io::Result<std::result::Result<Leader, String>> {
        let at = match self.host_place(f, host_id)? {
            Ok((at, _)) => at,
            Err(e) => return Ok(Err(e)),
        };
        let raw = read_sector(f, at, IO_ALIGN)?;
        Ok(parse_leader(&raw, DELTA_DISK_MAGIC, &self.lockspace))
    }
}

// --------------------------------------------- what this node's daemon saw

/// This node's sanlock daemon's record of a host (`sanlock client
/// host_status -D`): the host's own timestamp as last read, and when
/// (`last_live`, the daemon's CLOCK_MONOTONIC seconds) it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub generation: u64,
    pub timestamp: u64,
    pub last_live: u64,
}

/// Parse `sanlock client host_status -s LS -D`: "ID timestamp T" lines, each
/// followed by its `key=value` fields.
fn parse_host_status(text: &str, host_id: u64) -> Option<Seen> {
    let mut current = None;
    let (mut generation, mut timestamp, mut last_live) = (None, None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [id, "timestamp", _] = words.as_slice() {
            if current == Some(host_id) {
                break;
            }
            current = id.parse::<u64>().ok();
            continue;
        }
        if current != Some(host_id) {
            continue;
        }
        for kv in words {
            match kv.split_once('=') {
                Some(("owner_generation", v)) => generation = v.parse().ok(),
                Some(("timestamp", v)) => timestamp = v.parse().ok(),
                Some(("last_live", v)) => last_live = v.parse().ok(),
                _ => {}
            }
        }
    }
    Some(Seen {
        generation: generation?,
        timestamp: timestamp?,
        last_live: last_live?,
    })
}

async fn daemon_saw(lockspace: &str, host_id: u64) -> std::result::Result<Seen, String> {
    let out = crate::cmd::run(
        "/usr/sbin/sanlock",
        &["client", "host_status", "-s", lockspace, "-D"],
    )
    .await
    .map_err(|e| e.message())?;
    if out.code != 0 {
        return Err(format!("sanlock client host_status: exit {}", out.code));
    }
    parse_host_status(&out.stdout, host_id)
        .ok_or_else(|| format!("this node's sanlock daemon has no record of host_id {host_id}"))
}

/// The latest wall-clock time at which this node's daemon can have seen the
/// holder's last renewal. `last_live` is CLOCK_MONOTONIC seconds, cut to
/// the second, taken when the daemon read the new timestamp (itself after
/// the holder wrote it): the observation happened before `last_live + 1`
/// on the monotonic clock, and the monotonic clock runs beside the wall
/// clock at the same rate, so that instant is `now_real - (now_mono -
/// (last_live + 1))`. A fence completed after it came after every renewal
/// this node saw.
fn last_renewal_wall_bound(last_live: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let real = SystemTime::now();
    // SAFETY: plain clock read into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let seen_by = Duration::from_secs(last_live + 1);
    match mono_now.checked_sub(seen_by) {
        Some(ago) => real - ago,
        // Not over yet: the bound lies (less than a second) ahead.
        None => real + (seen_by - mono_now),
    }
}

// ------------------------------------------- what this node's watch saw

/// The holder's host lease as the helper's own watch last saw it change:
/// `seen_at` is the wall-clock end of the read that first showed this
/// (generation, timestamp), so the renewal that wrote it came no later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    pub generation: u64,
    pub timestamp: u64,
    pub seen_at: SystemTime,
}

/// (lockspace, host_id) -> the latest change seen. Written by the watch,
/// read by `check`.
static WATCHED: Mutex<BTreeMap<(String, u64), Watched>> = Mutex::new(BTreeMap::new());

/// How often the watch reads a held-elsewhere lease's holder: sanlock's
/// renewal period is 2 x io_timeout, so this bounds the gap between a
/// renewal and our record of it to one tick plus a read.
const WATCH_TICK: Duration = Duration::from_millis(250);
/// How often it re-reads each service's resource leader to learn who holds
/// it (another host: watch that host; ours, free, gone: stop).
const OWNER_EVERY: u32 = 8;

fn watched(lockspace: &str, host_id: u64) -> Option<Watched> {
    let map = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&(lockspace.to_string(), host_id)).copied()
}

/// Record one read of a host lease; a record only moves when the host's
/// generation or timestamp changed.
fn note_read(lockspace: &str, host: &Leader, at: SystemTime) {
    let mut map = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    let key = (lockspace.to_string(), host.owner_id);
    let same = map
        .get(&key)
        .is_some_and(|w| (w.generation, w.timestamp) == (host.generation, host.timestamp));
    if !same {
        map.insert(
            key,
            Watched {
                generation: host.generation,
                timestamp: host.timestamp,
                seen_at: at,
            },
        );
    }
}

fn forget(lockspace: &str) {
    let mut map = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|(ls, _), _| ls != lockspace);
}

/// One held-elsewhere lease under watch.
struct Holder {
    area: Area,
    host_id: u64,
    /// Byte offset of the holder's delta lease, and its sector size.
    at: u64,
    sector_size: usize,
    file: File,
}

/// Who holds `area`'s lease, when it is another host: its delta lease's
/// place, read once. `Ok(None)`: free, ours, or its holder's lease is free.
fn holder_of(area: &Area, me: Option<u64>) -> std::io::Result<Option<Holder>> {
    let file = open_direct(&area.dev, false)?;
    let Ok(owner) = area.read_owner(&file)? else {
        return Ok(None);
    };
    if owner.timestamp == 0 || owner.owner_id == 0 || Some(owner.owner_id) == me {
        return Ok(None);
    }
    let Ok((at, sector_size)) = area.host_place(&file, owner.owner_id)? else {
        return Ok(None);
    };
    Ok(Some(Holder {
        area: area.clone(),
        host_id: owner.owner_id,
        at,
        sector_size,
        file,
    }))
}

/// The watch (spawned once by main): for each service whose lease another
/// host holds, read that host's delta lease every WATCH_TICK and record
/// when it last changed. One sector per held-elsewhere lease per tick, one
/// resource-leader read per service every OWNER_EVERY ticks, nothing else.
pub async fn watch_holders(reg: std::sync::Arc<Registry>) {
    let mut holders: Vec<Holder> = Vec::new();
    let mut tick: u32 = 0;
    loop {
        if tick.is_multiple_of(OWNER_EVERY) {
            let areas: Vec<Area> = reg
                .service_names()
                .iter()
                .filter_map(|n| reg.service(n).ok())
                .filter_map(|s| Area::of(&s).map(|(_, a)| a))
                .collect();
            let me = reg.node_conf().host_id;
            let old: Vec<String> = holders.iter().map(|h| h.area.lockspace.clone()).collect();
            holders = tokio::task::spawn_blocking(move || {
                areas
                    .iter()
                    .filter_map(|a| holder_of(a, me).ok().flatten())
                    .collect::<Vec<Holder>>()
            })
            .await
            .unwrap_or_default();
            for ls in old {
                if !holders.iter().any(|h| h.area.lockspace == ls) {
                    forget(&ls);
                }
            }
        }
        tick = tick.wrapping_add(1);
        if !holders.is_empty() {
            let batch = std::mem::take(&mut holders);
            holders = tokio::task::spawn_blocking(move || {
                for h in &batch {
                    let Ok(raw) = read_sector(&h.file, h.at, h.sector_size) else {
                        continue;
                    };
                    let at = SystemTime::now();
                    if let Ok(l) = parse_leader(&raw, DELTA_DISK_MAGIC, &h.area.lockspace) {
                        if l.owner_id == h.host_id {
                            note_read(&h.area.lockspace, &l, at);
                        }
                    }
                }
                batch
            })
            .await
            .unwrap_or_default();
        }
        tokio::time::sleep(WATCH_TICK).await;
    }
}

// ------------------------------------------------------ the fence history

/// One fencing action from the cluster's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub action: String,
    pub target: String,
    pub status: String,
    /// Who asked for it and who ran it, for the audit line.
    pub origin: String,
    pub delegate: String,
    pub completed: Option<SystemTime>,
    pub completed_text: String,
}

impl Fence {
    /// A successful power-off or reboot: the node is known to have lost
    /// power (and with it its processes) at `completed`.
    fn powered_off(&self) -> bool {
        self.status == "success" && (self.action == "off" || self.action == "reboot")
    }

    fn describe(&self) -> String {
        format!(
            "{} of {} {} (asked by {}, run by {}), completed {}",
            self.action, self.target, self.status, self.origin, self.delegate, self.completed_text
        )
    }
}

fn xml_attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let v = tag[start..].split('"').next()?;
    Some(
        v.replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// `stonith_admin --history NODE --verbose --output-as=xml`: its
/// `fence_event`s.
fn parse_history(xml: &str) -> Vec<Fence> {
    xml.split("<fence_event")
        .skip(1)
        .filter_map(|chunk| {
            let tag = chunk.split('>').next()?;
            let text = xml_attr(tag, "completed").unwrap_or_default();
            let nsec = xml_attr(tag, "completed-nsec").and_then(|n| n.parse::<u32>().ok());
            Some(Fence {
                action: xml_attr(tag, "action")?,
                target: xml_attr(tag, "target")?,
                status: xml_attr(tag, "status").unwrap_or_default(),
                origin: xml_attr(tag, "origin").unwrap_or_default(),
                delegate: xml_attr(tag, "delegate").unwrap_or_default(),
                completed: parse_time(&text, nsec.unwrap_or(0)),
                completed_text: text,
            })
        })
        .collect()
}

/// Pacemaker's "YYYY-MM-DD HH:MM:SS[.frac] ±HH:MM" (or `Z`, or ±HHMM) as a
/// wall-clock time; `nsec` from `completed-nsec` when the text has no
/// fraction.
fn parse_time(s: &str, nsec: u32) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let rest = rest.trim();
    let tz_at = rest.find(['+', '-', 'Z', ' ']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(tz_at);
    let zone = zone.trim();
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(char::is_ascii_digit).collect();
            if digits.len() != 4 {
                return None;
            }
            let (zh, zm) = (
                digits[..2].parse::<i64>().ok()?,
                digits[2..].parse::<i64>().ok()?,
            );
            sign * (zh * 3600 + zm * 60)
        }
    };
    // days since 1970-01-01 (Howard Hinnant's days_from_civil)
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    let nanos = match frac {
        Some(f) => {
            let f: String = f.chars().take(9).collect();
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        None => nsec.min(999_999_999),
    };
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

async fn fence_history(node: &str) -> std::result::Result<Vec<Fence>, String> {
    let out = crate::cmd::run(
        "/usr/sbin/stonith_admin",
        // Without --verbose, Pacemaker 2.1.5 lists one entry per target,
        // and not always the latest (seen here: the older of two offs).
        &["--history", node, "--verbose", "--output-as=xml"],
    )
    .await
    .map_err(|e| e.message())?;
    if out.code != 0 {
        return Err(format!(
            "stonith_admin --history {node}: exit {} ({})",
            out.code,
            out.stderr.trim()
        ));
    }
    Ok(parse_history(&out.stdout))
}

// ------------------------------------------------------------- the verdict

/// Why a holder may be taken over: everything the audit line names.
#[derive(Debug, Clone)]
pub struct Fenced {
    pub node: String,
    pub host_id: u64,
    pub generation: u64,
    /// The holder's host-lease timestamp, as read on disk and seen here.
    pub timestamp: u64,
    pub fence: Fence,
    pub last_seen_by: SystemTime,
    /// Who saw that renewal: this helper's watch, or sanlock's daemon.
    pub seen_from: &'static str,
}

/// The rule, on what was read: `Ok(fence)` only for a successful off or
/// reboot of `node` completed at or after `seen_by` (its whole second
/// counts, floored), with the holder's host lease on disk still the one the
/// resource lease names and the one this node last saw, `seen` =
/// (generation, timestamp).
fn decide<'a>(
    node: &str,
    owner: &Leader,
    host: &Leader,
    seen: (u64, u64),
    seen_by: SystemTime,
    history: &'a [Fence],
) -> std::result::Result<&'a Fence, String> {
    if host.owner_id != owner.owner_id || host.generation != owner.generation {
        return Err(format!(
            "host_id {}'s lease on disk is generation {} of host {}, the lease names generation \
             {}: the node came back, it is not the holder that was fenced",
            owner.owner_id, host.generation, host.owner_id, owner.generation
        ));
    }
    if seen != (owner.generation, host.timestamp) {
        return Err(format!(
            "host_id {} renewed since this node last looked (seen: generation {} timestamp {}, \
             disk: generation {} timestamp {}): it is alive",
            owner.owner_id, seen.0, seen.1, host.generation, host.timestamp
        ));
    }
    let fences: Vec<&Fence> = history
        .iter()
        .filter(|f| f.target == node && f.powered_off())
        .collect();
    if fences.is_empty() {
        return Err(format!(
            "the cluster has no successful off or reboot of {node}"
        ));
    }
    let after = fences
        .iter()
        .filter(|f| f.completed.is_some_and(|c| c >= seen_by))
        .max_by_key(|f| f.completed);
    if let Some(f) = after {
        return Ok(f);
    }
    // Pacemaker 2.1.5 gives `completed` in whole seconds: a fence in the
    // same second as the bound may have come after it, or not.
    let close = fences.iter().any(|f| {
        f.completed
            .is_some_and(|c| c + Duration::from_secs(1) > seen_by)
    });
    Err(if close {
        format!(
            "the latest fence of {node} completed within a second of its last renewal seen here \
             ({}), and the fencing history gives whole seconds: cannot tell which came first",
            wall(seen_by)
        )
    } else {
        format!(
            "every successful fence of {node} completed before its last renewal seen here \
             ({}): it may have come back",
            wall(seen_by)
        )
    })
}

fn wall(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Is the lease's owner (another node) one the cluster fenced? `Ok(None)`:
/// the lease is free, or its owner's host lease is (it holds nothing).
async fn check(reg: &Registry, area: &Area) -> std::result::Result<Option<Fenced>, String> {
    let a = area.clone();
    let owner = blocking_io(move || a.read_owner(&open_direct(&a.dev, false)?)).await??;
    if owner.timestamp == 0 || owner.owner_id == 0 {
        return Ok(None);
    }
    if reg.node_conf().host_id == Some(owner.owner_id) {
        return Err("this node owns the lease".into());
    }
    let (a, id) = (area.clone(), owner.owner_id);
    let host = blocking_io(move || a.read_host(&open_direct(&a.dev, false)?, id)).await??;
    if host.timestamp == 0 || host.owner_id != owner.owner_id || host.generation > owner.generation
    {
        // sanlock's own rule (paxos_lease.c): such an owner holds nothing.
        return Ok(None);
    }
    let node = reg
        .node_conf()
        .node_of_host_id(owner.owner_id, reg.node())
        .ok_or_else(|| {
            format!(
                "host_id {} is no [peer] of /etc/ferry/ferry.conf: cannot ask the cluster about it",
                owner.owner_id
            )
        })?;
    // The watch's record when it saw what the disk still says; else the
    // daemon's coarser one (the helper just started, or the watch lagged).
    let (seen, seen_by, seen_from) = match watched(&area.lockspace, owner.owner_id)
        .filter(|w| (w.generation, w.timestamp) == (host.generation, host.timestamp))
    {
        Some(w) => (
            (w.generation, w.timestamp),
            w.seen_at,
            "this helper's watch",
        ),
        None => {
            let s = daemon_saw(&area.lockspace, owner.owner_id).await?;
            (
                (s.generation, s.timestamp),
                last_renewal_wall_bound(s.last_live),
                "this node's sanlock daemon",
            )
        }
    };
    let history = fence_history(&node).await?;
    let fence = decide(&node, &owner, &host, seen, seen_by, &history)?.clone();
    Ok(Some(Fenced {
        node,
        host_id: owner.owner_id,
        generation: owner.generation,
        timestamp: host.timestamp,
        fence,
        last_seen_by: seen_by,
        seen_from,
    }))
}

/// Guard rule 0: does the node that holds the lease in fact hold nothing?
/// True when its host lease is free on disk (or taken by a newer
/// generation), or when the cluster fenced it after its last renewal: the
/// start may go on, and the lease is taken over when it gets there.
pub async fn holder_holds_nothing(reg: &Registry, svc: &ServiceConfig) -> bool {
    let Some((_, area)) = Area::of(svc) else {
        return false;
    };
    match check(reg, &area).await {
        Ok(_) => true,
        Err(why) => {
            info!(service = %svc.name, "the lease's holder is not taken over: {why}");
            false
        }
    }
}

/// After an acquire refused because another node holds the lease: free
/// that node's host lease when the cluster fenced it (module doc), and say
/// so in one audit line. `Some(log line)`: freed, acquire again.
pub async fn free_fenced_holder(reg: &Registry, svc: &ServiceConfig) -> Result<Option<String>> {
    let Some((rid, area)) = Area::of(svc) else {
        return Ok(None);
    };
    let f = match check(reg, &area).await {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(why) => {
            info!(service = %svc.name, "the lease's holder is not taken over: {why}");
            return Ok(None);
        }
    };
    let (a, want) = (area.clone(), f.clone());
    let written = blocking_io(move || compare_and_free(&a, &want)).await;
    let line = format!(
        "free the host lease of {} (host_id {}, generation {}, timestamp {}, last renewal seen \
         by {} at {}): fenced, {}",
        f.node,
        f.host_id,
        f.generation,
        f.timestamp,
        f.seen_from,
        wall(f.last_seen_by),
        f.fence.describe()
    );
    match written {
        Ok(Ok(())) => {
            Record::new(
                None,
                "io.ferry.lease.takeover",
                &svc.name,
                &rid,
                Outcome::Ok,
            )
            .note(&line)
            .log();
            Ok(Some(line))
        }
        Ok(Err(changed)) => {
            info!(service = %svc.name, "not taken over: {changed}");
            Ok(None)
        }
        Err(e) => {
            let err = HelperError::failed(format!("{line}: {e}"));
            Record::new(
                None,
                "io.ferry.lease.takeover",
                &svc.name,
                &rid,
                Outcome::Failed,
            )
            .error(&err)
            .log();
            warn!(service = %svc.name, "{}", err.message());
            Err(err)
        }
    }
}

/// Re-read the holder's host lease and free it only if it still reads
/// exactly as checked (same generation, same timestamp): the one write.
fn compare_and_free(area: &Area, f: &Fenced) -> std::io::Result<std::result::Result<(), String>> {
    let file = open_direct(&area.dev, true)?;
    let host = match area.read_host(&file, f.host_id)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if host.timestamp == 0 {
        // Freed meanwhile (another node taking over too): nothing to do.
        return Ok(Ok(()));
    }
    if host.owner_id != f.host_id
        || host.generation != f.generation
        || host.timestamp != f.timestamp
    {
        return Ok(Err(format!(
            "host_id {}'s lease changed since the check (generation {}, timestamp {})",
            f.host_id, host.generation, host.timestamp
        )));
    }
    let sector = released(&host);
    let mut buf = Aligned::new(IO_ALIGN)?;
    let len = sector.len();
    buf.as_mut()[..len].copy_from_slice(&sector);
    let ls_offset = area.ls_offset + (f.host_id - 1) * host.sector_size as u64;
    file.write_all_at(&buf.as_mut()[..len], ls_offset)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delta lease as `sanlock direct init` + `acquire_id` would write it.
    fn record(magic: u32, ls: &str, owner: u64, generation: u64, ts: u64) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0..4].copy_from_slice(&magic.to_le_bytes());
        s[4..8].copy_from_slice(&0x0003_0002u32.to_le_bytes());
        s[12..16].copy_from_slice(&512u32.to_le_bytes());
        s[OFF_OWNER_ID..OFF_OWNER_ID + 8].copy_from_slice(&owner.to_le_bytes());
        s[OFF_OWNER_GENERATION..OFF_OWNER_GENERATION + 8]
            .copy_from_slice(&generation.to_le_bytes());
        s[OFF_SPACE_NAME..OFF_SPACE_NAME + ls.len()].copy_from_slice(ls.as_bytes());
        s[OFF_TIMESTAMP..OFF_TIMESTAMP + 8].copy_from_slice(&ts.to_le_bytes());
        let sum = leader_checksum(&s);
        s[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        s
    }

    #[test]
    fn crc32c_is_sanlocks() {
        // CRC-32C check value: crc32c(~0, "123456789") ^ ~0 = 0xE3069283.
        let mut buf = b"123456789".to_vec();
        buf.resize(LEADER_CHECKSUM_LEN, 0);
        let mut crc: u32 = !0;
        for &b in b"123456789" {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            }
        }
        assert_eq!(crc ^ !0, 0xE306_9283);
    }

    #[test]
    fn a_record_round_trips_and_frees() {
        let raw = record(DELTA_DISK_MAGIC, "ferry-busybox", 1, 3, 3583);
        let l = parse_leader(&raw, DELTA_DISK_MAGIC, "ferry-busybox").expect("valid");
        assert_eq!((l.owner_id, l.generation, l.timestamp), (1, 3, 3583));
        let freed = released(&l);
        let f = parse_leader(&freed, DELTA_DISK_MAGIC, "ferry-busybox").expect("valid checksum");
        assert_eq!((f.owner_id, f.generation, f.timestamp), (1, 3, 0));
        assert!(parse_leader(&raw, PAXOS_DISK_MAGIC, "ferry-busybox").is_err());
        assert!(parse_leader(&raw, DELTA_DISK_MAGIC, "ferry-other").is_err());
        let mut bad = raw.clone();
        bad[OFF_TIMESTAMP] ^= 1;
        assert!(parse_leader(&bad, DELTA_DISK_MAGIC, "ferry-busybox").is_err());
    }

    #[test]
    fn host_status_parses() {
        let text = "1 timestamp 3583\nlast_check=100 last_live=98 last_req=0 owner_id=1 \
                    owner_generation=3 timestamp=3583 io_timeout=1 owner_name=abc\n\
                    2 timestamp 777\nlast_check=100 last_live=100 last_req=0 owner_id=2 \
                    owner_generation=5 timestamp=777 io_timeout=1 owner_name=def\n";
        assert_eq!(
            parse_host_status(text, 1),
            Some(Seen {
                generation: 3,
                timestamp: 3583,
                last_live: 98
            })
        );
        assert_eq!(parse_host_status(text, 2).map(|s| s.generation), Some(5));
        assert_eq!(parse_host_status(text, 3), None);
    }

    #[test]
    fn history_and_times_parse() {
        let xml = r#"<pacemaker-result api-version="2.25" request="stonith_admin --history node1 --output-as=xml">
  <fence_history>
    <fence_event action="off" target="node1" client="pacemaker-controld.77" origin="node2" status="success" delegate="node2" completed="2026-12-01 21:30:02 +00:00" completed-nsec="250000000"/>
    <fence_event action="reboot" target="node1" client="stonith_admin.9" origin="node2" status="failed" exit-reason="x"/>
  </fence_history>
  <status code="0" message="OK"/>
</pacemaker-result>"#;
        let h = parse_history(xml);
        assert_eq!(h.len(), 2);
        assert!(h[0].powered_off());
        assert!(!h[1].powered_off());
        let t = h[0].completed.expect("a time");
        assert_eq!(
            t.duration_since(UNIX_EPOCH).expect("after 1970"),
            Duration::new(1_796_160_602, 250_000_000)
        );
        assert_eq!(
            parse_time("2026-12-01 22:30:02.5 +0100", 0),
            Some(UNIX_EPOCH + Duration::new(1_796_160_602, 500_000_000))
        );
        assert_eq!(
            parse_time("2026-12-01T21:30:02Z", 0),
            Some(UNIX_EPOCH + Duration::new(1_796_160_602, 0))
        );
        assert_eq!(parse_time("yesterday", 0), None);
    }

    fn fence(status: &str, action: &str, at: u64) -> Fence {
        Fence {
            action: action.into(),
            target: "node1".into(),
            status: status.into(),
            origin: "node2".into(),
            delegate: "node2".into(),
            completed: Some(UNIX_EPOCH + Duration::from_secs(at)),
            completed_text: String::new(),
        }
    }

    #[test]
    fn only_a_fence_after_the_last_renewal_of_the_same_generation_counts() {
        let ls = "ferry-busybox";
        let owner = parse_leader(
            &record(PAXOS_DISK_MAGIC, ls, 1, 3, 50),
            PAXOS_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        let host = parse_leader(
            &record(DELTA_DISK_MAGIC, ls, 1, 3, 3583),
            DELTA_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        let seen = (3, 3583);
        let by = UNIX_EPOCH + Duration::from_secs(1000);
        let ok = [fence("success", "off", 1001)];
        assert!(decide("node1", &owner, &host, seen, by, &ok).is_ok());
        let reboot = [fence("success", "reboot", 1001)];
        assert!(decide("node1", &owner, &host, seen, by, &reboot).is_ok());
        // older than the last renewal seen, or in the same second
        let old = [fence("success", "off", 998)];
        let e = decide("node1", &owner, &host, seen, by, &old).expect_err("older");
        assert!(e.contains("completed before"), "{e}");
        // the whole second of the bound itself counts: the fence completed
        // no earlier than that second's start, the renewal no later
        let same = [fence("success", "off", 1000)];
        assert!(decide("node1", &owner, &host, seen, by, &same).is_ok());
        let e = decide(
            "node1",
            &owner,
            &host,
            seen,
            by + Duration::from_millis(300),
            &same,
        )
        .expect_err("in the second before the bound");
        assert!(e.contains("cannot tell"), "{e}");
        // failed, or not a power-off, or another node
        for f in [fence("failed", "off", 1001), fence("success", "on", 1001)] {
            assert!(decide("node1", &owner, &host, seen, by, &[f]).is_err());
        }
        assert!(decide("node3", &owner, &host, seen, by, &ok).is_err());
        assert!(decide("node1", &owner, &host, seen, by, &[]).is_err());
        // back again: a new generation on disk
        let back = parse_leader(
            &record(DELTA_DISK_MAGIC, ls, 1, 4, 12),
            DELTA_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        let seen4 = (4, 12);
        assert!(decide("node1", &owner, &back, seen4, by, &ok).is_err());
        // renewed since this node's daemon last looked
        let later = (3, 3581);
        assert!(decide("node1", &owner, &host, later, by, &ok).is_err());
    }

    #[test]
    fn the_watch_bound_lets_a_fence_just_after_the_renewal_count() {
        let ls = "ferry-watchtest";
        let owner = parse_leader(
            &record(PAXOS_DISK_MAGIC, ls, 1, 3, 50),
            PAXOS_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        let host = parse_leader(
            &record(DELTA_DISK_MAGIC, ls, 1, 3, 3583),
            DELTA_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        let t = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        // the watch reads timestamp 3583 first at 999.8 s, and again later
        assert_eq!(watched(ls, 1), None);
        note_read(ls, &host, t(999_800));
        note_read(ls, &host, t(1_000_050));
        let w = watched(ls, 1).expect("recorded");
        assert_eq!(
            (w.generation, w.timestamp, w.seen_at),
            (3, 3583, t(999_800))
        );
        // a fence completed "1000" (whole seconds) counts: 1000 >= 999.8
        let fence_at_1000 = [fence("success", "off", 1000)];
        let seen = (w.generation, w.timestamp);
        assert!(decide("node1", &owner, &host, seen, w.seen_at, &fence_at_1000).is_ok());
        // the daemon's bound for the same renewal (last_live cut to the
        // second, + 1, and read at its own renewal up to 2 s later) lies
        // past that second: the case that waited for the expiry before
        let daemon_by = t(1_002_000);
        let e = decide("node1", &owner, &host, seen, daemon_by, &fence_at_1000)
            .expect_err("daemon bound");
        assert!(e.contains("before"), "{e}");
        // a fence in the second before the watch's read cannot be placed
        let fence_at_999 = [fence("success", "off", 999)];
        let e = decide("node1", &owner, &host, seen, w.seen_at, &fence_at_999)
            .expect_err("same second");
        assert!(e.contains("cannot tell"), "{e}");
        // a renewal moves the record to the read that showed it
        let renewed = parse_leader(
            &record(DELTA_DISK_MAGIC, ls, 1, 3, 3585),
            DELTA_DISK_MAGIC,
            ls,
        )
        .expect("valid");
        note_read(ls, &renewed, t(1_001_900));
        let w = watched(ls, 1).expect("recorded");
        assert_eq!((w.timestamp, w.seen_at), (3585, t(1_001_900)));
        // ... and the old fence no longer counts; nor on a new generation
        assert!(decide(
            "node1",
            &owner,
            &renewed,
            (3, 3585),
            w.seen_at,
            &fence_at_1000
        )
        .is_err());
        let back = parse_leader(&record(DELTA_DISK_MAGIC, ls, 1, 4, 5), DELTA_DISK_MAGIC, ls)
            .expect("valid");
        note_read(ls, &back, t(1_005_000));
        let w = watched(ls, 1).expect("recorded");
        assert_eq!((w.generation, w.seen_at), (4, t(1_005_000)));
        let late = [fence("success", "off", 1006)];
        assert!(decide("node1", &owner, &back, (4, 5), w.seen_at, &late).is_err());
        forget(ls);
        assert_eq!(watched(ls, 1), None);
    }

    #[test]
    fn the_wall_bound_is_after_the_observation() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = SystemTime::now();
        // seen during the current monotonic second: the bound is not in the past
        let b = last_renewal_wall_bound(ts.tv_sec as u64);
        assert!(b >= now - Duration::from_millis(5));
        let b = last_renewal_wall_bound(ts.tv_sec as u64 - 10);
        assert!(b < now - Duration::from_secs(8) && b > now - Duration::from_secs(11));
    }
}
