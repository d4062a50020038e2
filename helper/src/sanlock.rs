//! A small safe wrapper over `libsanlock_client` (sanlock 3.8, Debian 12).
//!
//! No crate exists, so this declares the few C structs and calls ferry needs,
//! copied from /usr/include/sanlock*.h (layouts checked by the unit tests).
//! Every call here blocks (disk I/O through the sanlock daemon, up to seconds
//! for add_lockspace): call them from `spawn_blocking`.
//!
//! All calls go through the local sanlock daemon's socket
//! (`/run/sanlock/sanlock.sock`, or `$SANLOCK_RUN_DIR`); none touches the disk
//! directly.

use std::ffi::{c_char, c_int};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Instant;

use tracing::debug;

// ------------------------------------------------------------------ C side

const SANLK_NAME_LEN: usize = 48;
const SANLK_PATH_LEN: usize = 1024;

const SANLK_RES_PERSISTENT: u32 = 0x8;
// Alignment and sector size of a lease (sanlock.h). Passed explicitly: left
// out, sanlock guesses from the device, and a 4Kn device gets 8 MiB
// alignment, which would overlap the next part of ferry's 1 MiB layout.
const SANLK_RES_ALIGN1M: u32 = 0x10;
const SANLK_RES_SECTOR512: u32 = 0x100;
const SANLK_RES_SECTOR4K: u32 = 0x200;
const SANLK_LSF_ALIGN1M: u32 = 0x10;
const SANLK_LSF_SECTOR512: u32 = 0x100;
const SANLK_LSF_SECTOR4K: u32 = 0x200;
// sanlock_resource.h: have the daemon send SIGTERM where it would SIGKILL.
const SANLK_RESTRICT_SIGKILL: u32 = 0x2;
// sanlock_admin.h set_config commands.
const SANLK_CONFIG_USED_BY_ORPHANS: u32 = 0x4;
const SANLK_ACQUIRE_ORPHAN: u32 = 0x2;
const SANLK_ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
const SANLK_REL_ORPHAN: u32 = 0x4;
const SANLK_INQ_WAIT: u32 = 0x1;

// sanlk_host.flags & SANLK_HOST_MASK, from sanlock_admin.h.
const SANLK_HOST_MASK: u32 = 0xf;
const SANLK_HOST_FREE: u32 = 0x2;
const SANLK_HOST_LIVE: u32 = 0x3;
const SANLK_HOST_FAIL: u32 = 0x4;
const SANLK_HOST_DEAD: u32 = 0x5;

// Return codes from sanlock_rv.h (the ones worth naming).
const SANLK_LEADER_MAGIC: i32 = -223;
const SANLK_LEADER_LOCKSPACE: i32 = -226;
const SANLK_LEADER_RESOURCE: i32 = -227;
const SANLK_ACQUIRE_LVER: i32 = -240;
const SANLK_ACQUIRE_LOCKSPACE: i32 = -241;
const SANLK_ACQUIRE_IDDISK: i32 = -242;
const SANLK_ACQUIRE_IDLIVE: i32 = -243;
const SANLK_ACQUIRE_OWNED: i32 = -244;
const SANLK_ACQUIRE_OTHER: i32 = -245;
const SANLK_ACQUIRE_SHRETRY: i32 = -246;
const SANLK_ACQUIRE_OWNED_RETRY: i32 = -247;
const SANLK_RELEASE_OWNER: i32 = -251;
const SANLK_HOSTID_BUSY: i32 = -262;
const SANLK_AIO_TIMEOUT: i32 = -202;

#[repr(C)]
#[derive(Clone, Copy)]
struct SanlkDisk {
    path: [c_char; SANLK_PATH_LEN],
    offset: u64,
    pad1: u32,
    pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SanlkResource {
    lockspace_name: [c_char; SANLK_NAME_LEN],
    name: [c_char; SANLK_NAME_LEN],
    lver: u64,
    data64: u64,
    data32: u32,
    unused: u32,
    flags: u32,
    num_disks: u32,
    // followed by `struct sanlk_disk disks[0]` (flexible array)
}

/// `struct sanlk_resource` followed by exactly one `struct sanlk_disk`: the
/// C flexible array member, laid out the way the library reads it
/// (sizeof(sanlk_resource) is 128, a multiple of the disk's alignment, so
/// `disk` sits right where `disks[0]` does).
#[repr(C)]
#[derive(Clone, Copy)]
struct Resource1 {
    res: SanlkResource,
    disk: SanlkDisk,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SanlkLockspace {
    name: [c_char; SANLK_NAME_LEN],
    host_id: u64,
    flags: u32,
    host_id_disk: SanlkDisk,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SanlkHost {
    host_id: u64,
    generation: u64,
    timestamp: u64,
    io_timeout: u32,
    flags: u32,
}

// Linked by build.rs (pkg-config libsanlock_client).
extern "C" {
    fn sanlock_register() -> c_int;
    fn sanlock_acquire(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut SanlkResource,
        opt_in: *mut std::ffi::c_void,
    ) -> c_int;
    fn sanlock_release(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut SanlkResource,
    ) -> c_int;
    fn sanlock_restrict(sock: c_int, flags: u32) -> c_int;
    fn sanlock_set_config(
        ls_name: *const c_char,
        flags: u32,
        cmd: u32,
        data: *mut std::ffi::c_void,
    ) -> c_int;
    fn sanlock_add_lockspace_timeout(ls: *mut SanlkLockspace, flags: u32, io_timeout: u32)
        -> c_int;
    fn sanlock_inq_lockspace(ls: *mut SanlkLockspace, flags: u32) -> c_int;
    fn sanlock_write_lockspace(
        ls: *mut SanlkLockspace,
        max_hosts: c_int,
        flags: u32,
        io_timeout: u32,
    ) -> c_int;
    fn sanlock_write_resource(
        res: *mut SanlkResource,
        max_hosts: c_int,
        num_hosts: c_int,
        flags: u32,
    ) -> c_int;
    fn sanlock_get_hosts(
        ls_name: *const c_char,
        host_id: u64,
        hss: *mut *mut SanlkHost,
        hss_count: *mut c_int,
        flags: u32,
    ) -> c_int;
    fn sanlock_read_resource_owners(
        res: *mut SanlkResource,
        flags: u32,
        hss: *mut *mut SanlkHost,
        hss_count: *mut c_int,
    ) -> c_int;
}

// ------------------------------------------------------------------ errors

/// A sanlock call that failed: which one, and the (negative) code it
/// returned — an errno or one of sanlock_rv.h's SANLK_* values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanlockError {
    pub op: &'static str,
    pub code: i32,
}

pub type Result<T> = std::result::Result<T, SanlockError>;

impl SanlockError {
    fn new(op: &'static str, code: i32) -> Self {
        // Some paths return a positive errno; keep one convention.
        SanlockError {
            op,
            code: -code.abs(),
        }
    }

    /// The refusals that mean "another host holds this lease (or may)":
    /// the caller must not go ahead, and retrying later is the only cure.
    pub fn is_held_elsewhere(&self) -> bool {
        // Measured: a live owner gives IDLIVE at once; an owner whose daemon
        // died gives OWNED_RETRY until its host lease expires (~70 s at
        // io_timeout 1).
        matches!(
            self.code,
            SANLK_ACQUIRE_IDLIVE
                | SANLK_ACQUIRE_OWNED
                | SANLK_ACQUIRE_OTHER
                | SANLK_ACQUIRE_OWNED_RETRY
                | SANLK_ACQUIRE_SHRETRY
        )
    }

    /// The daemon went away under this registration (restarted, killed):
    /// a new registration is needed, and what the old one held is an
    /// orphan or gone.
    pub fn is_connection_lost(&self) -> bool {
        [libc::EPIPE, libc::ECONNRESET, libc::ENOTCONN, libc::EBADF].contains(&-self.code)
    }

    /// This host holds the lease as an orphan (its previous holder process
    /// died): acquire it with `orphan` to adopt it.
    pub fn is_orphan_here(&self) -> bool {
        self.code == -libc::EUCLEAN
    }

    /// A name for the code and what it means, for people reading the log.
    fn meaning(&self) -> &'static str {
        let c = self.code;
        match c {
            SANLK_ACQUIRE_IDLIVE => "SANLK_ACQUIRE_IDLIVE: the lease is held by a live host",
            SANLK_ACQUIRE_OWNED => "SANLK_ACQUIRE_OWNED: the lease is owned by another host",
            SANLK_ACQUIRE_OWNED_RETRY => {
                "SANLK_ACQUIRE_OWNED_RETRY: the lease is owned by another host (retry later)"
            }
            SANLK_ACQUIRE_OTHER => "SANLK_ACQUIRE_OTHER: another host is acquiring the lease",
            SANLK_ACQUIRE_SHRETRY => "SANLK_ACQUIRE_SHRETRY: shared holders changed, retry",
            SANLK_ACQUIRE_IDDISK => {
                "SANLK_ACQUIRE_IDDISK: the owner's host_id lease could not be checked"
            }
            SANLK_ACQUIRE_LVER => "SANLK_ACQUIRE_LVER: the lease version changed",
            SANLK_ACQUIRE_LOCKSPACE => {
                "SANLK_ACQUIRE_LOCKSPACE: this host has not joined the lockspace"
            }
            SANLK_RELEASE_OWNER => "SANLK_RELEASE_OWNER: the lease is not owned by this host",
            SANLK_HOSTID_BUSY => "SANLK_HOSTID_BUSY: another live host uses this host_id",
            SANLK_LEADER_MAGIC => "SANLK_LEADER_MAGIC: no lease initialized at this offset",
            SANLK_LEADER_LOCKSPACE => {
                "SANLK_LEADER_LOCKSPACE: the lease on disk belongs to another lockspace"
            }
            SANLK_LEADER_RESOURCE => {
                "SANLK_LEADER_RESOURCE: the lease on disk has another resource name"
            }
            SANLK_AIO_TIMEOUT => "SANLK_AIO_TIMEOUT: disk I/O timed out",
            _ if c == -libc::EAGAIN => {
                "EAGAIN: try again (e.g. the lockspace is being removed)"
            }
            _ if c == -libc::EEXIST => "EEXIST: already exists / already held",
            _ if c == -libc::ENOENT => {
                "ENOENT: not found (or no daemon socket: is the sanlock daemon running?)"
            }
            _ if c == -libc::ECONNREFUSED => {
                "ECONNREFUSED: no one listens on the socket: is the sanlock daemon running?"
            }
            _ if c == -libc::EINPROGRESS => "EINPROGRESS: the lockspace is still being joined",
            _ if c == -libc::ENAMETOOLONG => {
                "ENAMETOOLONG: sanlock names are at most 47 bytes, paths 1023"
            }
            _ if c == -libc::EINVAL => "EINVAL: invalid argument",
            _ if c == -libc::EBUSY => "EBUSY: in use",
            _ if c == -libc::EUCLEAN => {
                "EUCLEAN: this host holds the lease as an orphan: acquire it with orphan to adopt it"
            }
            _ if c == -libc::EPERM => {
                "EPERM: not permitted (on release: this registration does not hold the lease)"
            }
            _ if c == -libc::EACCES => "EACCES: permission denied",
            _ if c == -libc::ENOSPC => "ENOSPC: too many leases/resources",
            _ if c == -libc::EPIPE || c == -libc::ECONNRESET => {
                "the sanlock daemon closed the connection"
            }
            _ => "",
        }
    }
}

impl std::fmt::Display for SanlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.meaning() {
            "" => write!(f, "sanlock {}: {}", self.op, self.code),
            m => write!(f, "sanlock {}: {} ({m})", self.op, self.code),
        }
    }
}

impl std::error::Error for SanlockError {}

fn check(op: &'static str, rv: c_int) -> Result<c_int> {
    if rv < 0 {
        Err(SanlockError::new(op, rv))
    } else {
        Ok(rv)
    }
}

// ------------------------------------------------------- building structs

/// A lease area on a disk: the device path (this node's own path to the
/// shared disk) and the byte offset of the lease (a multiple of 1 MiB).
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    pub path: &'a str,
    pub offset: u64,
}

/// Copy `s` into a fixed C char array. The array must keep a terminating
/// NUL (sanlock's own tools print names with %s), so at most LEN-1 bytes.
/// A colon would corrupt sanlock's "LS:RES:path:off" string format, a NUL
/// would silently cut the name: both are refused, never truncated.
fn fill<const N: usize>(op: &'static str, dst: &mut [c_char; N], s: &str) -> Result<()> {
    if s.len() >= N {
        return Err(SanlockError::new(op, -libc::ENAMETOOLONG));
    }
    if s.as_bytes().contains(&0) {
        return Err(SanlockError::new(op, -libc::EINVAL));
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as c_char;
    }
    Ok(())
}

fn name<const N: usize>(op: &'static str, dst: &mut [c_char; N], s: &str) -> Result<()> {
    if s.is_empty() || s.contains(':') || s.contains(char::is_whitespace) {
        return Err(SanlockError::new(op, -libc::EINVAL));
    }
    fill(op, dst, s)
}

fn zeroed_disk() -> SanlkDisk {
    SanlkDisk {
        path: [0; SANLK_PATH_LEN],
        offset: 0,
        pad1: 0,
        pad2: 0,
    }
}

/// Can `path` go into sanlock's requests and its state strings as is?
/// sanlock writes resources as "LS:RES:path:offset" separated by spaces;
/// a path with a space, a colon, a backslash or a control character made
/// every inquire on the node fail (-81) once it was held. `ferry validate`
/// refuses these too (core's config); this is the last line.
pub fn path_is_plain(path: &str) -> bool {
    !path.is_empty()
        && path.starts_with('/')
        && !path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '\\')
}

/// The `SANLK_RES_*` and `SANLK_LSF_*` align/sector flags for a lease on a
/// device with this logical sector size. ferry's layout is 1 MiB per part
/// on every device: ALIGN1M with 512-byte sectors (2000 hosts) or with 4K
/// sectors (250 hosts).
pub fn layout_flags(sector_size: u32) -> (u32, u32) {
    if sector_size == 4096 {
        (
            SANLK_RES_ALIGN1M | SANLK_RES_SECTOR4K,
            SANLK_LSF_ALIGN1M | SANLK_LSF_SECTOR4K,
        )
    } else {
        (
            SANLK_RES_ALIGN1M | SANLK_RES_SECTOR512,
            SANLK_LSF_ALIGN1M | SANLK_LSF_SECTOR512,
        )
    }
}

/// The logical sector size of the device at `path` (BLKSSZGET); 512 for a
/// plain file or when it cannot be read (sanlock then fails the I/O itself).
pub fn sector_size(path: &str) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    let Ok(f) = std::fs::File::open(path) else {
        return 512;
    };
    if !f.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
        return 512;
    }
    let mut size: c_int = 0;
    // BLKSSZGET = _IO(0x12, 104): the logical block size, as an int.
    const BLKSSZGET: libc::c_ulong = 0x1268;
    // SAFETY: a valid fd and a pointer to an int, as the ioctl expects.
    let rv = unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET, &mut size) };
    if rv == 0 && size == 4096 {
        4096
    } else {
        512
    }
}

fn make_disk(op: &'static str, disk: &Disk) -> Result<SanlkDisk> {
    if !path_is_plain(disk.path) {
        return Err(SanlockError::new(op, -libc::EINVAL));
    }
    let mut d = zeroed_disk();
    fill(op, &mut d.path, disk.path)?;
    d.offset = disk.offset;
    Ok(d)
}

fn make_resource(
    op: &'static str,
    lockspace: &str,
    resource: &str,
    disk: &Disk,
) -> Result<Box<Resource1>> {
    let mut r = Box::new(Resource1 {
        res: SanlkResource {
            lockspace_name: [0; SANLK_NAME_LEN],
            name: [0; SANLK_NAME_LEN],
            lver: 0,
            data64: 0,
            data32: 0,
            unused: 0,
            flags: layout_flags(sector_size(disk.path)).0,
            num_disks: 1,
        },
        disk: make_disk(op, disk)?,
    });
    name(op, &mut r.res.lockspace_name, lockspace)?;
    name(op, &mut r.res.name, resource)?;
    Ok(r)
}

fn make_lockspace(
    op: &'static str,
    lockspace: &str,
    host_id: u64,
    disk: &Disk,
) -> Result<SanlkLockspace> {
    let mut ls = SanlkLockspace {
        name: [0; SANLK_NAME_LEN],
        host_id,
        flags: layout_flags(sector_size(disk.path)).1,
        host_id_disk: make_disk(op, disk)?,
    };
    name(op, &mut ls.name, lockspace)?;
    Ok(ls)
}

// ------------------------------------------------------------- lockspaces

/// Write a new lockspace (the hosts' delta leases) at `disk.offset`,
/// overwriting whatever is there. The default max_hosts (2000 at 512-byte
/// sectors) fills 1 MiB.
pub fn init_lockspace(lockspace: &str, disk: &Disk, io_timeout: u32) -> Result<()> {
    const OP: &str = "init lockspace";
    let mut ls = make_lockspace(OP, lockspace, 0, disk)?;
    // SAFETY: ls is a fully initialized sanlk_lockspace the call only reads.
    check(OP, unsafe {
        sanlock_write_lockspace(&mut ls, 0, 0, io_timeout)
    })?;
    Ok(())
}

/// Write a new, free resource lease at `disk.offset` (1 MiB at 512-byte
/// sectors), overwriting whatever is there.
pub fn init_resource(lockspace: &str, resource: &str, disk: &Disk) -> Result<()> {
    const OP: &str = "init resource";
    let mut r = make_resource(OP, lockspace, resource, disk)?;
    // SAFETY: r is a sanlk_resource followed by its num_disks (1) disks.
    check(OP, unsafe { sanlock_write_resource(&mut r.res, 0, 0, 0) })?;
    Ok(())
}

/// Join the lockspace as `host_id`. Takes seconds (the daemon must watch
/// the host_id lease for a while: ~3 s at io_timeout 1, ~21 s at 10).
/// Already joined is success; a join already under way is waited for.
pub fn add_lockspace(lockspace: &str, host_id: u64, disk: &Disk, io_timeout: u32) -> Result<()> {
    const OP: &str = "add lockspace";
    if host_id == 0 {
        return Err(SanlockError::new(OP, -libc::EINVAL));
    }
    let mut ls = make_lockspace(OP, lockspace, host_id, disk)?;
    let t0 = Instant::now();
    // SAFETY: ls is a fully initialized sanlk_lockspace.
    let rv = unsafe { sanlock_add_lockspace_timeout(&mut ls, 0, io_timeout) };
    debug!(
        lockspace,
        host_id,
        rv,
        ms = t0.elapsed().as_millis() as u64,
        "sanlock add_lockspace"
    );
    if rv == -libc::EEXIST {
        return Ok(());
    }
    if rv == -libc::EINPROGRESS {
        // Someone else's join is running: wait for its outcome instead of
        // reporting a transient state.
        let mut ls = make_lockspace(OP, lockspace, host_id, disk)?;
        // SAFETY: as above.
        check(OP, unsafe {
            sanlock_inq_lockspace(&mut ls, SANLK_INQ_WAIT)
        })?;
        return Ok(());
    }
    check(OP, rv)?;
    Ok(())
}

/// Has this node joined the lockspace (as `host_id`)? A join still in
/// progress, or a lockspace being removed, counts as not joined.
pub fn lockspace_joined(lockspace: &str, host_id: u64, disk: &Disk) -> Result<bool> {
    const OP: &str = "inquire lockspace";
    let mut ls = make_lockspace(OP, lockspace, host_id, disk)?;
    // SAFETY: ls is a fully initialized sanlk_lockspace.
    let rv = unsafe { sanlock_inq_lockspace(&mut ls, 0) };
    match rv {
        0 => Ok(true),
        _ if rv == -libc::ENOENT || rv == -libc::EINPROGRESS || rv == -libc::EAGAIN => Ok(false),
        _ => Err(SanlockError::new(OP, rv)),
    }
}

// ------------------------------------------------------------ resources

/// How to acquire a resource lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcquireFlags {
    /// Keep the lease when the holding process exits (it becomes an
    /// "orphan" of this host instead of being released): ferry's mounts
    /// outlive the helper process.
    pub persistent: bool,
    /// Adopt this host's orphaned persistent lease (after a helper restart).
    pub orphan: bool,
    /// Refuse at once when another host owns the lease, instead of waiting
    /// (up to 2 × io_timeout) for its owner to show signs of life.
    /// Measured: ~1 ms (-243 IDLIVE) once this daemon has watched the
    /// owner's host lease; the first refusal within seconds of joining the
    /// lockspace still takes ~1 × io_timeout (-247 OWNED_RETRY).
    pub owner_nowait: bool,
}

/// A registration with the sanlock daemon: the daemon ties the leases
/// acquired through it to this process, and treats the socket closing as
/// the process exiting (non-persistent leases released, persistent ones
/// orphaned). Keep it for the life of the process.
#[derive(Debug)]
pub struct Registration {
    fd: OwnedFd,
    /// Requests and replies share the one socket: two threads talking at
    /// once would interleave their messages, so calls take turns.
    lock: Mutex<()>,
}

/// Register this process with the local sanlock daemon.
pub fn register() -> Result<Registration> {
    const OP: &str = "register";
    // SAFETY: no arguments; returns a new socket fd or -errno.
    let fd = check(OP, unsafe { sanlock_register() })?;
    // SAFETY: fd is a socket we just got and own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The library does not set close-on-exec. A child (docker, mount, ...)
    // inheriting the socket would keep the registration alive after the
    // helper dies, so the daemon would never orphan our leases.
    // SAFETY: plain fcntl on a valid fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0
    {
        return Err(SanlockError::new(
            OP,
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    // When this host loses a lockspace (its lease disk fails, the area is
    // overwritten, `sanlock client rem_lockspace`), the daemon kills the
    // processes holding leases in it: SIGKILL at once on a removal, after
    // a grace period otherwise. A SIGKILLed helper would leave the mounts
    // live; restricted, the daemon sends SIGTERM instead (repeatedly, once
    // a second), which the helper takes as "check your leases now" and
    // answers by letting go of that service's storage (leasewatch.rs).
    // SAFETY: a registered socket we own.
    check(OP, unsafe {
        sanlock_restrict(fd.as_raw_fd(), SANLK_RESTRICT_SIGKILL)
    })?;
    Ok(Registration {
        fd,
        lock: Mutex::new(()),
    })
}

impl Registration {
    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the guard leaves no half-done state here
        // (each call is one request/reply), so a poisoned lock is fine.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acquire the resource lease (exclusive) for this registration.
    pub fn acquire(
        &self,
        lockspace: &str,
        resource: &str,
        disk: &Disk,
        flags: AcquireFlags,
    ) -> Result<()> {
        const OP: &str = "acquire";
        let mut r = make_resource(OP, lockspace, resource, disk)?;
        if flags.persistent {
            r.res.flags |= SANLK_RES_PERSISTENT;
        }
        let mut f = 0;
        if flags.orphan {
            f |= SANLK_ACQUIRE_ORPHAN;
        }
        if flags.owner_nowait {
            f |= SANLK_ACQUIRE_OWNER_NOWAIT;
        }
        let mut args = [&mut r.res as *mut SanlkResource];
        let _turn = self.turn();
        let t0 = Instant::now();
        // SAFETY: one valid resource (with its disk) in args; no options.
        let rv = unsafe {
            sanlock_acquire(
                self.fd.as_raw_fd(),
                -1,
                f,
                1,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        debug!(
            lockspace,
            resource,
            ?flags,
            rv,
            ms = t0.elapsed().as_millis() as u64,
            "sanlock acquire"
        );
        check(OP, rv)?;
        Ok(())
    }

    /// Release the resource lease held through this registration
    /// (persistent or not).
    pub fn release(&self, lockspace: &str, resource: &str, disk: &Disk) -> Result<()> {
        const OP: &str = "release";
        let mut r = make_resource(OP, lockspace, resource, disk)?;
        let mut args = [&mut r.res as *mut SanlkResource];
        let _turn = self.turn();
        let t0 = Instant::now();
        // SAFETY: one valid resource in args.
        let rv = unsafe { sanlock_release(self.fd.as_raw_fd(), -1, 0, 1, args.as_mut_ptr()) };
        debug!(
            lockspace,
            resource,
            rv,
            ms = t0.elapsed().as_millis() as u64,
            "sanlock release"
        );
        check(OP, rv)?;
        Ok(())
    }

    /// Has the daemon closed this registration (it died or restarted)?
    /// The daemon never writes to a registered socket unasked, so between
    /// calls it is readable only once it is closed: EOF or a hangup.
    pub fn connection_closed(&self) -> bool {
        let _turn = self.turn();
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd; timeout 0 never blocks.
        let rv = unsafe { libc::poll(&mut p, 1, 0) };
        rv < 0 || (rv > 0 && p.revents != 0)
    }
}

/// Is this node's membership of the lockspace failing or gone? `Ok(None)`:
/// joined and renewing. `Ok(Some(why))`: the daemon has stopped renewing it
/// (8 x io_timeout of failed renewals: I/O errors, the area overwritten) or
/// is removing it (`rem_lockspace`), or does not have it at all.
///
/// sanlock has no read-only query for this: `inq_lockspace` still answers 0
/// while a failed lockspace waits for its processes to die. The set_config
/// command USED_BY_ORPHANS answers -ENOSPC exactly when the daemon has
/// marked the lockspace dead, and otherwise sets a flag ferry wants anyway:
/// the lockspace is not removed while it has orphaned leases (a helper
/// that died leaves its mounts, and so its leases, in place).
pub fn lockspace_failed(lockspace: &str) -> Result<Option<&'static str>> {
    const OP: &str = "set config";
    let mut ls_name = [0 as c_char; SANLK_NAME_LEN];
    name(OP, &mut ls_name, lockspace)?;
    // SAFETY: a NUL-terminated name; this command takes no data.
    let rv = unsafe {
        sanlock_set_config(
            ls_name.as_ptr(),
            0,
            SANLK_CONFIG_USED_BY_ORPHANS,
            std::ptr::null_mut(),
        )
    };
    match rv {
        0 => Ok(None),
        _ if rv == -libc::ENOSPC => Ok(Some(
            "the sanlock daemon declared the lockspace dead (renewals failed, or it is being removed)",
        )),
        _ if rv == -libc::ENOENT => Ok(Some("the sanlock daemon no longer has the lockspace")),
        _ => Err(SanlockError::new(OP, rv)),
    }
}

/// The timestamp of this host's own delta lease, as the daemon last read
/// it back (it reads the lockspace after each renewal, every 2 x
/// io_timeout). A timestamp that stops moving means renewals fail.
/// `Ok(None)`: the daemon has no host data yet (just joined).
pub fn own_timestamp(lockspace: &str, host_id: u64) -> Result<Option<u64>> {
    const OP: &str = "get hosts";
    let mut ls_name = [0 as c_char; SANLK_NAME_LEN];
    name(OP, &mut ls_name, lockspace)?;
    let mut hss: *mut SanlkHost = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: as in owner_states, for one host_id.
    let rv = unsafe { sanlock_get_hosts(ls_name.as_ptr(), host_id, &mut hss, &mut n, 0) };
    let hosts = take_hosts(hss, n);
    if rv == -libc::EAGAIN {
        return Ok(None);
    }
    check(OP, rv)?;
    Ok(hosts
        .iter()
        .find(|h| h.host_id == host_id)
        .map(|h| h.timestamp))
}

/// The host ids that own the resource lease now, read from disk by the
/// daemon without acquiring anything. Empty when the lease is free.
///
/// This is the on-disk view, blind to liveness: a host whose daemon died
/// still shows as owner until another host takes the lease over, and an
/// orphaned persistent lease still shows its host. `owner_states` adds
/// what the local daemon knows of each owner.
pub fn owners(lockspace: &str, resource: &str, disk: &Disk) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = read_owners(lockspace, resource, disk)?
        .iter()
        .map(|h| h.host_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// What this node's daemon knows of another host's liveness (from watching
/// its host_id lease in the lockspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Renewing its host_id lease: its leases are in force.
    Live,
    /// Has stopped renewing for a while; may be recovering. Still blocks.
    Fail,
    /// Has stopped renewing long enough that its watchdog would have fired:
    /// its leases can be taken over.
    Dead,
    /// Its host_id lease is released (it left the lockspace cleanly).
    Free,
    /// The owner record is of an older generation of that host, or the host
    /// is not in the lockspace at all: its ownership is stale.
    Gone,
    /// Not watched long enough to tell (e.g. for ~2 s after joining).
    Unknown,
}

/// One owner of a resource lease, with what this node knows about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub host_id: u64,
    pub state: HostState,
}

/// The resource's owners (as `owners`) with each owner's liveness as this
/// node's daemon sees it, the way `sanlock_test_resource_owners` judges
/// them: only Live, Fail and Unknown owners would make an acquire fail.
/// Needs this node to have joined the lockspace (else -ENOENT).
///
/// Measured at io_timeout 1 after an owner's daemon was killed: Live for
/// ~10 s, then Fail, then Dead at ~71-76 s, when an acquire elsewhere
/// succeeds.
pub fn owner_states(lockspace: &str, resource: &str, disk: &Disk) -> Result<Vec<Owner>> {
    const OP: &str = "get hosts";
    let owners = read_owners(lockspace, resource, disk)?;
    let mut ls_name = [0 as c_char; SANLK_NAME_LEN];
    name(OP, &mut ls_name, lockspace)?;
    let mut hss: *mut SanlkHost = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: ls_name is NUL-terminated; host_id 0 asks for every host; the
    // library mallocs n hosts into hss, ours to free.
    let rv = unsafe { sanlock_get_hosts(ls_name.as_ptr(), 0, &mut hss, &mut n, 0) };
    let hosts = take_hosts(hss, n);
    // Measured: for ~2 s after joining, the daemon has no host list yet and
    // answers -EAGAIN. That is "cannot tell yet", not a failure.
    let known = rv != -libc::EAGAIN;
    if known {
        check(OP, rv)?;
    }
    Ok(owners
        .iter()
        .map(|o| {
            let state = match hosts.iter().find(|h| h.host_id == o.host_id) {
                _ if !known => HostState::Unknown,
                Some(h) if h.generation == o.generation => match h.flags & SANLK_HOST_MASK {
                    SANLK_HOST_LIVE => HostState::Live,
                    SANLK_HOST_FAIL => HostState::Fail,
                    SANLK_HOST_DEAD => HostState::Dead,
                    SANLK_HOST_FREE => HostState::Free,
                    _ => HostState::Unknown,
                },
                _ => HostState::Gone,
            };
            Owner {
                host_id: o.host_id,
                state,
            }
        })
        .collect())
}

/// Copy a malloc'd array of `n` hosts from the library and free it.
fn take_hosts(hss: *mut SanlkHost, n: c_int) -> Vec<SanlkHost> {
    if hss.is_null() {
        return Vec::new();
    }
    let n = usize::try_from(n).unwrap_or(0);
    // SAFETY: the library returned hss pointing to n initialized structs.
    let v = unsafe { std::slice::from_raw_parts(hss, n) }.to_vec();
    // SAFETY: allocated by the library with malloc, not used after this.
    unsafe { libc::free(hss.cast()) };
    v
}

/// The owner records of a resource lease, read from disk by the daemon.
fn read_owners(lockspace: &str, resource: &str, disk: &Disk) -> Result<Vec<SanlkHost>> {
    const OP: &str = "read owners";
    let mut r = make_resource(OP, lockspace, resource, disk)?;
    let mut hss: *mut SanlkHost = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: r is a valid resource with one disk; the library mallocs an
    // array of n hosts into hss, ours to free.
    let rv = unsafe { sanlock_read_resource_owners(&mut r.res, 0, &mut hss, &mut n) };
    let hosts = take_hosts(hss, n);
    check(OP, rv)?;
    Ok(hosts.into_iter().filter(|h| h.host_id != 0).collect())
}

/// Release this host's orphaned persistent lease on the resource (one no
/// process holds since its holder exited). The daemon takes this request
/// only on a registered connection (a one-off socket gets -EBUSY), so this
/// registers a short-lived one; no lease is ever acquired through it.
///
/// The daemon releases asynchronously: this returns before the disk write,
/// and `owners()` goes on showing this host for some tens of ms (< 50 ms
/// measured). Succeeds, doing nothing, when there is no such orphan (the
/// lease is free, or held by a live process of this host).
pub fn release_orphan(lockspace: &str, resource: &str, disk: &Disk) -> Result<()> {
    const OP: &str = "release orphan";
    let mut r = make_resource(OP, lockspace, resource, disk)?;
    let reg = register()?;
    let mut args = [&mut r.res as *mut SanlkResource];
    // SAFETY: one valid resource in args, on our own registered socket.
    let rv = unsafe {
        sanlock_release(
            reg.fd.as_raw_fd(),
            -1,
            SANLK_REL_ORPHAN,
            1,
            args.as_mut_ptr(),
        )
    };
    debug!(lockspace, resource, rv, "sanlock release orphan");
    check(OP, rv)?;
    Ok(())
}

// ------------------------------------------------------- reading an area

const DELTA_DISK_MAGIC: u32 = 0x1221_2010;
const PAXOS_DISK_MAGIC: u32 = 0x0615_2010;

/// What one part (1 MiB) of a lease area holds, read from the disk itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// Only zeros: never initialised.
    Empty,
    /// A lockspace (delta leases) named so.
    Lockspace(String),
    /// A resource lease: (lockspace, resource).
    Resource(String, String),
    /// Something else: another magic, or data after a zero magic.
    Other(u32),
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leader::Empty => write!(f, "never initialised (zeros)"),
            Leader::Lockspace(n) => write!(f, "sanlock lockspace '{n}'"),
            Leader::Resource(ls, r) => write!(f, "sanlock resource lease '{ls}:{r}'"),
            Leader::Other(0) => write!(f, "data that is not a sanlock lease"),
            Leader::Other(m) => write!(f, "data with magic {m:#010x}, not a sanlock lease"),
        }
    }
}

fn c_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Read a part's bytes as a sanlock leader record (leader.h: magic at 0,
/// space_name at 56, resource_name at 104, both 48 bytes, little-endian).
fn classify_leader(part: &[u8]) -> Leader {
    if part.iter().all(|&b| b == 0) {
        return Leader::Empty;
    }
    let magic = part
        .get(..4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0);
    match (magic, part.get(56..104), part.get(104..152)) {
        (DELTA_DISK_MAGIC, Some(ls), _) => Leader::Lockspace(c_name(ls)),
        (PAXOS_DISK_MAGIC, Some(ls), Some(r)) => Leader::Resource(c_name(ls), c_name(r)),
        _ => Leader::Other(magic),
    }
}

/// Read `len` bytes at `offset` of `path` with O_DIRECT, as sanlock does:
/// each node has its own cache of a shared disk, a buffered read could
/// show what another node overwrote long ago.
fn read_direct(path: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const ALIGN: usize = 4096;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a non-zero size; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
    }
    // SAFETY: ptr is valid for layout.size() bytes until dealloc.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
    let r = f
        .read_exact_at(&mut buf[..len], offset)
        .map(|()| buf[..len].to_vec());
    // SAFETY: allocated above with this layout, no reference outlives this.
    unsafe { std::alloc::dealloc(ptr, layout) };
    r
}

/// What the two parts of a lease area (lockspace at `offset`, resource
/// 1 MiB after) hold, read from the disk directly, without the daemon.
pub fn read_area(path: &str, offset: u64, part_len: u64) -> std::io::Result<(Leader, Leader)> {
    let len = usize::try_from(part_len)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ls = read_direct(path, offset, len)?;
    let res = read_direct(path, offset + part_len, len)?;
    Ok((classify_leader(&ls), classify_leader(&res)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::mem::{align_of, offset_of, size_of};

    /// Sizes and offsets from sanlock.h (x86_64), so a typo in the Rust
    /// copy of a struct shows here instead of as a corrupt request.
    #[test]
    fn layouts_match_the_header() {
        assert_eq!(size_of::<SanlkDisk>(), 1040);
        assert_eq!(offset_of!(SanlkDisk, offset), 1024);
        assert_eq!(size_of::<SanlkResource>(), 128);
        assert_eq!(offset_of!(SanlkResource, lver), 96);
        assert_eq!(offset_of!(SanlkResource, flags), 120);
        assert_eq!(offset_of!(SanlkResource, num_disks), 124);
        assert_eq!(offset_of!(Resource1, disk), size_of::<SanlkResource>());
        assert_eq!(align_of::<SanlkResource>(), 8);
        assert_eq!(size_of::<SanlkLockspace>(), 1104);
        assert_eq!(offset_of!(SanlkLockspace, host_id), 48);
        assert_eq!(offset_of!(SanlkLockspace, flags), 56);
        assert_eq!(offset_of!(SanlkLockspace, host_id_disk), 64);
        assert_eq!(size_of::<SanlkHost>(), 32);
    }

    #[test]
    fn long_names_are_errors_not_truncations() {
        let disk = Disk {
            path: "/dev/x",
            offset: 0,
        };
        let n47 = "a".repeat(47);
        let n48 = "a".repeat(48);
        assert!(make_resource("t", &n47, &n47, &disk).is_ok());
        let Err(e) = make_resource("t", &n48, "r", &disk) else {
            panic!("a 48-byte name was accepted");
        };
        assert_eq!(e.code, -libc::ENAMETOOLONG);
        assert!(make_resource("t", "ls", &n48, &disk).is_err());
        assert!(make_lockspace("t", &n48, 1, &disk).is_err());
        let long_path = "/".repeat(1024);
        let d = Disk {
            path: &long_path,
            offset: 0,
        };
        assert!(make_resource("t", "ls", "r", &d).is_err());
        for bad in ["", "a:b", "a b", "a\0b"] {
            assert!(make_resource("t", bad, "r", &disk).is_err(), "{bad:?}");
        }
        // A multi-byte name counts in bytes.
        assert!(make_resource("t", &"é".repeat(24), "r", &disk).is_err());
        assert!(make_resource("t", &"é".repeat(23), "r", &disk).is_ok());
    }

    #[test]
    fn resource_is_filled_in() {
        let disk = Disk {
            path: "/run/ferry-lab/disks/lease0",
            offset: 1 << 20,
        };
        let r = make_resource("t", "ferry", "svc", &disk).expect("a valid resource");
        // SAFETY: fill keeps a terminating NUL.
        let ls = unsafe { CStr::from_ptr(r.res.lockspace_name.as_ptr()) };
        assert_eq!(ls.to_str().expect("utf-8"), "ferry");
        let p = unsafe { CStr::from_ptr(r.disk.path.as_ptr()) };
        assert_eq!(p.to_str().expect("utf-8"), disk.path);
        assert_eq!(r.disk.offset, 1 << 20);
        assert_eq!(r.res.num_disks, 1);
    }

    #[test]
    fn layout_flags_are_explicit() {
        // 512-byte sectors: ALIGN1M|SECTOR512 (0x10|0x100), 4Kn: ALIGN1M|SECTOR4K.
        assert_eq!(layout_flags(512), (0x110, 0x110));
        assert_eq!(layout_flags(4096), (0x210, 0x210));
        // Both an ALIGN and a SECTOR flag, as sanlock requires, never 8M.
        for size in [512, 4096, 0, 1024] {
            let (res, lsf) = layout_flags(size);
            assert_eq!(res & 0xf0, SANLK_RES_ALIGN1M);
            assert_eq!(lsf & 0xf0, SANLK_LSF_ALIGN1M);
            assert_ne!(res & 0x300, 0);
        }
        let disk = Disk {
            path: "/nonexistent/lease",
            offset: 0,
        };
        let r = make_resource("t", "ls", "r", &disk).expect("a valid resource");
        assert_eq!(r.res.flags, SANLK_RES_ALIGN1M | SANLK_RES_SECTOR512);
        let ls = make_lockspace("t", "ls", 1, &disk).expect("a valid lockspace");
        assert_eq!(ls.flags, SANLK_LSF_ALIGN1M | SANLK_LSF_SECTOR512);
    }

    #[test]
    fn odd_paths_never_reach_sanlock() {
        for bad in ["", "relative", "/a b", "/a:b", "/a\\b", "/a\tb", "/a\nb"] {
            assert!(!path_is_plain(bad), "{bad:?}");
            let d = Disk {
                path: bad,
                offset: 0,
            };
            assert!(make_resource("t", "ls", "r", &d).is_err(), "{bad:?}");
        }
        assert!(path_is_plain("/run/ferry-lab/disks/lease0"));
        assert!(path_is_plain(
            "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1"
        ));
    }

    #[test]
    fn areas_are_classified() {
        let mut buf = vec![0u8; 4096];
        assert_eq!(classify_leader(&buf), Leader::Empty);
        buf[..4].copy_from_slice(&0x1221_2010u32.to_le_bytes());
        buf[56..61].copy_from_slice(b"other");
        assert_eq!(classify_leader(&buf), Leader::Lockspace("other".into()));
        buf[..4].copy_from_slice(&0x0615_2010u32.to_le_bytes());
        buf[104..111].copy_from_slice(b"service");
        assert_eq!(
            classify_leader(&buf),
            Leader::Resource("other".into(), "service".into())
        );
        buf[..4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(classify_leader(&buf), Leader::Other(0xdead_beef));
        let mut buf = vec![0u8; 4096];
        buf[4000] = 1;
        assert_eq!(classify_leader(&buf), Leader::Other(0));
    }

    #[test]
    fn errors_read_well() {
        let e = SanlockError::new("acquire", -243);
        assert!(e.is_held_elsewhere());
        assert_eq!(
            e.to_string(),
            "sanlock acquire: -243 (SANLK_ACQUIRE_IDLIVE: the lease is held by a live host)"
        );
        let e = SanlockError::new("register", -libc::ECONNREFUSED);
        assert!(!e.is_held_elsewhere());
        assert!(e.to_string().contains("is the sanlock daemon running?"));
        assert_eq!(
            SanlockError::new("x", -9999).to_string(),
            "sanlock x: -9999"
        );
    }
}
