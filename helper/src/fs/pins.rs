//! What keeps a filesystem's superblock alive after every mount of it we can
//! see is gone, named so that an operator (or the stop itself) can act.
//!
//! Only asked on the failure path of a stop: it walks every process's fds.
//! The kinds, and what frees each:
//! - a process with a file, a cwd, a root or a mapping on the device, in any
//!   mount namespace (also on a lazily detached mount): killing it;
//! - a file sent over a unix socket and never received (`SCM_RIGHTS` in a
//!   socket buffer): held by no process, freed when the receiving socket
//!   goes, so killing the processes that hold that socket;
//! - a loop device whose backing file lives on the filesystem: `losetup -d`;
//! - an overlay whose layers live on it: unmounting the overlay;
//! - a mount namespace nobody lives in, kept by an fd or an `nsfs` bind
//!   mount: unmounting inside it (the caller tries), or closing what keeps it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::mntns::MountNs;
use super::{parse_mountinfo, MountEntry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Processes using a file on it (fd, cwd, root, mmap).
    Users {
        pids: Vec<i32>,
        what: String,
    },
    /// A file on it in flight in a unix socket; `pids` hold the socket.
    InFlight {
        pids: Vec<i32>,
        socket: u64,
    },
    Loop {
        dev: String,
        backing: String,
    },
    Overlay {
        mountpoint: String,
        namespace: String,
    },
    /// A mount namespace without processes that still mounts the device.
    Namespace {
        namespace: String,
        held_by: String,
    },
}

impl Pin {
    /// What it is and what the operator does about it, one line.
    pub fn describe(&self) -> String {
        match self {
            Pin::Users { pids, what } => format!(
                "{what} of processes {}: stop them, or let the stop kill them",
                super::describe_pids(pids)
            ),
            Pin::InFlight { pids, socket } => format!(
                "an fd of the filesystem sent over unix socket {socket} and never received, \
                 held by processes {}: only killing them frees it",
                super::describe_pids(pids)
            ),
            Pin::Loop { dev, backing } => {
                format!("loop device {dev} backed by {backing}: losetup -d {dev}")
            }
            Pin::Overlay {
                mountpoint,
                namespace,
            } => format!(
                "an overlay on {mountpoint} (mount namespace {namespace}) has its layers on it: \
                 unmount the overlay"
            ),
            Pin::Namespace { namespace, held_by } => format!(
                "mount namespace {namespace}, where no process lives, still mounts it, \
                 kept by {held_by}: unmount or close that"
            ),
        }
    }
}

fn pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| *p != me)
                .collect()
        })
        .unwrap_or_default()
}

fn dev_of(meta: &std::fs::Metadata) -> (u32, u32) {
    (libc::major(meta.dev()), libc::minor(meta.dev()))
}

fn fds(pid: i32) -> Vec<(i32, std::path::PathBuf)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<i32>().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// Every pin of `devno`. `mnt` is where the filesystem is (was) mounted
/// here, to recognise loop backing files and overlay layers by path.
pub fn find(devno: (u32, u32), mnt: &str) -> Vec<Pin> {
    let mut pins = Vec::new();
    let mut sockets: Vec<(i32, i32, u64)> = Vec::new();
    let mut ns_fds: Vec<(i32, i32, String)> = Vec::new();
    for pid in pids() {
        let mut what = Vec::new();
        for (name, link) in [("cwd", "cwd"), ("root", "root")] {
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/{link}")) {
                if dev_of(&m) == devno {
                    what.push(name);
                }
            }
        }
        for (n, path) in fds(pid) {
            let target = std::fs::read_link(&path)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(ino) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                sockets.push((pid, n, ino));
            } else if target.starts_with("mnt:[") {
                ns_fds.push((pid, n, target));
            } else if std::fs::metadata(&path).is_ok_and(|m| dev_of(&m) == devno) {
                what.push("an open file");
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let hex = format!("{:02x}:{:02x} ", devno.0, devno.1);
        if maps
            .lines()
            .any(|l| l.split_whitespace().nth(3).is_some_and(|d| hex.trim() == d))
        {
            what.push("a mapped file");
        }
        if !what.is_empty() {
            what.dedup();
            pins.push(Pin::Users {
                pids: vec![pid],
                what: what.join(", "),
            });
        }
    }
    pins.extend(in_flight(devno, &sockets));
    pins.extend(loops(devno, mnt));
    pins.extend(overlays_and_namespaces(devno, mnt, &ns_fds));
    pins
}

/// Files in flight: peek (never receive) the first message queued on each
/// unix socket of every process, through a copy of the socket taken with
/// `pidfd_getfd`, and look at the fds it carries.
fn in_flight(devno: (u32, u32), sockets: &[(i32, i32, u64)]) -> Vec<Pin> {
    let mut seen = std::collections::BTreeSet::new();
    let mut pinning = Vec::new();
    for (pid, fd, ino) in sockets {
        if !seen.insert(*ino) {
            continue;
        }
        let Some(sock) = steal_fd(*pid, *fd) else {
            continue;
        };
        if peek_fds(&sock)
            .iter()
            .any(|f| f.metadata().is_ok_and(|m| dev_of(&m) == devno))
        {
            pinning.push(*ino);
        }
    }
    pinning
        .into_iter()
        .map(|socket| {
            let mut pids: Vec<i32> = sockets
                .iter()
                .filter(|(_, _, i)| *i == socket)
                .map(|(p, _, _)| *p)
                .collect();
            pids.dedup();
            Pin::InFlight { pids, socket }
        })
        .collect()
}

/// A copy of another process's fd (`pidfd_getfd`, root only).
fn steal_fd(pid: i32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: raw syscalls; each returned fd is owned right away.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as i32;
        (got >= 0).then(|| OwnedFd::from_raw_fd(got))
    }
}

/// The fds carried by the first queued message, peeked: the message stays
/// where it is for its owner. The copies we get are closed on return.
fn peek_fds(sock: &OwnedFd) -> Vec<std::fs::File> {
    const MAX_FDS: usize = 64;
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<i32>()) as u32) };
    let mut control = vec![0u8; space as usize];
    // SAFETY: msghdr is plain data; every pointer in it points into buffers
    // that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: a valid socket fd and a msghdr as above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // macros, bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..len / std::mem::size_of::<i32>() {
                    out.push(std::fs::File::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    out
}

/// Loop devices whose backing file is on the filesystem.
fn loops(devno: (u32, u32), mnt: &str) -> Vec<Pin> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim().to_string();
            let on_it = backing == mnt
                || backing.starts_with(&format!("{mnt}/"))
                || std::fs::metadata(&backing).is_ok_and(|m| dev_of(&m) == devno);
            on_it.then(|| Pin::Loop {
                dev: format!("/dev/{name}"),
                backing,
            })
        })
        .collect()
}

/// Overlay layer options that point into `mnt`.
fn overlay_on(line: &str, mnt: &str) -> bool {
    let Some((_, after)) = line.split_once(" - ") else {
        return false;
    };
    let mut f = after.split(' ');
    if f.next() != Some("overlay") {
        return false;
    }
    let opts = f.nth(1).unwrap_or("");
    opts.split(',').any(|o| {
        o.split_once('=').is_some_and(|(k, v)| {
            matches!(k, "lowerdir" | "upperdir" | "workdir")
                && v.split(':')
                    .any(|p| p == mnt || p.starts_with(&format!("{mnt}/")))
        })
    })
}

/// Overlays over the filesystem, in any namespace we can read; and mount
/// namespaces that no process lives in yet still mount the device.
fn overlays_and_namespaces(
    devno: (u32, u32),
    mnt: &str,
    ns_fds: &[(i32, i32, String)],
) -> Vec<Pin> {
    let mut pins = Vec::new();
    let mut tables: Vec<(String, String)> = Vec::new();
    let mut lived_in = std::collections::BTreeSet::new();
    for pid in pids() {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        let ns = ns.to_string_lossy().into_owned();
        if lived_in.insert(ns.clone()) {
            if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                tables.push((ns, t));
            }
        }
    }
    // Namespaces kept only by an fd of some process.
    let mut orphans: Vec<(String, String, MountNs)> = Vec::new();
    for (pid, fd, ns) in ns_fds {
        if lived_in.contains(ns) || orphans.iter().any(|(n, _, _)| n == ns) {
            continue;
        }
        let Ok(file) = std::fs::File::open(format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        if let Ok(handle) = MountNs::from_file(file) {
            orphans.push((
                ns.clone(),
                format!("fd {fd} of process {}", super::describe_pids(&[*pid])),
                handle,
            ));
        }
    }
    // ... or by an nsfs bind mount in a namespace we can read.
    let bound: Vec<(String, String)> = tables
        .iter()
        .flat_map(|(ns, t)| {
            t.lines()
                .filter(|l| l.contains(" - nsfs "))
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    let root = f.get(3)?.to_string();
                    let at = super::unescape(f.get(4)?);
                    root.starts_with("mnt:[")
                        .then(|| (root, format!("an nsfs bind mount on {at} in {ns}")))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let own = std::fs::read_link("/proc/self/ns/mnt")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (ns, by) in bound {
        if lived_in.contains(&ns) || orphans.iter().any(|(n, _, _)| *n == ns) {
            continue;
        }
        // Only a bind mount in our own namespace can be opened by its path.
        let path = by
            .split(" on ")
            .nth(1)
            .and_then(|s| s.strip_suffix(&format!(" in {own}")));
        if let Some(Ok(handle)) = path.map(|p| {
            std::fs::File::open(p)
                .map_err(|e| e.to_string())
                .and_then(MountNs::from_file)
        }) {
            orphans.push((ns, by, handle));
        } else {
            pins.push(Pin::Namespace {
                namespace: ns,
                held_by: by,
            });
        }
    }
    for (ns, held_by, handle) in orphans {
        if let Ok(t) = handle.mountinfo() {
            if parse_mountinfo(&t)
                .iter()
                .any(|m: &MountEntry| m.devno == devno)
            {
                pins.push(Pin::Namespace {
                    namespace: ns.clone(),
                    held_by,
                });
            }
            tables.push((ns, t));
        }
    }
    for (ns, t) in &tables {
        for l in t.lines().filter(|l| overlay_on(l, mnt)) {
            if let Some(at) = l.split(' ').nth(4) {
                pins.push(Pin::Overlay {
                    mountpoint: super::unescape(at),
                    namespace: ns.clone(),
                });
            }
        }
    }
    pins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_layers_on_the_fs_are_recognised() {
        let l = "99 1 0:50 / /merged rw - overlay overlay rw,lowerdir=/srv/busybox/l:/usr,upperdir=/tmp/u,workdir=/tmp/w";
        assert!(overlay_on(l, "/srv/busybox"));
        assert!(!overlay_on(l, "/srv/busy"));
        let l = "99 1 0:50 / /merged rw - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c";
        assert!(!overlay_on(l, "/srv/busybox"));
        let l = "22 1 7:3 / /srv/busybox rw - ext4 /dev/loop3 rw,lowerdir=/srv/busybox";
        assert!(!overlay_on(l, "/srv/busybox"), "only overlays count");
    }

    #[test]
    fn a_file_in_flight_is_seen_and_left_in_place() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir();
        let devno = dev_of(&std::fs::metadata(&dir).expect("tmp"));
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        let f = std::fs::File::open(&dir).expect("open tmp");
        send_fd(&a, f.as_raw_fd());
        drop(f);
        let sock = OwnedFd::from(b.try_clone().expect("clone"));
        let seen = peek_fds(&sock);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].metadata().is_ok_and(|m| dev_of(&m) == devno));
        drop(seen);
        // peeked, not taken: a second peek sees it again
        assert_eq!(peek_fds(&sock).len(), 1);
    }

    fn send_fd(s: &std::os::unix::net::UnixDatagram, fd: i32) {
        let mut data = [b'x'];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
            assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), 1);
        }
    }
}
