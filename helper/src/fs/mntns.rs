//! Unmounting inside another mount namespace without running anything from
//! it.
//!
//! A mount namespace is the view of whoever made it: a guest with
//! `unshare -Urm` can mount a tmpfs over `/usr/sbin` there and put its own
//! `umount` in it. `nsenter --mount=… umount` would run that file as root.
//! So nothing is exec'd: a thread of the helper's own leaves the helper's
//! filesystem context (`unshare(CLONE_FS)`, which `setns` into a mount
//! namespace requires of a thread), enters the namespace, calls `umount2`
//! itself and ends. The namespace is opened by fd once and checked against
//! the one that was found, so a recycled pid cannot point elsewhere.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

/// A path, and what `umount2` said of it.
pub type Unmounted = (String, Result<(), Errno>);

/// An opened mount namespace of another process.
pub struct MountNs {
    file: std::fs::File,
    /// `mnt:[4026…]`, as /proc/PID/ns/mnt reads.
    pub name: String,
}

impl MountNs {
    /// The mount namespace `pid` lives in, if it is still `expected`.
    pub fn of_pid(pid: i32, expected: &str) -> Result<MountNs, String> {
        let path = format!("/proc/{pid}/ns/mnt");
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let name = ns_name(&file).map_err(|e| format!("{path}: {e}"))?;
        if name != expected {
            return Err(format!("pid {pid} left {expected} (now in {name})"));
        }
        Ok(MountNs { file, name })
    }

    /// Unmount `paths` there, in order; one result per path. `paths` are
    /// resolved in that namespace, without following a final symlink.
    pub fn unmount(&self, paths: Vec<String>) -> Result<Vec<Unmounted>, String> {
        self.inside(move || {
            Ok(paths
                .into_iter()
                .map(|p| {
                    let r = umount2(p.as_str(), MntFlags::UMOUNT_NOFOLLOW);
                    (p, r)
                })
                .collect())
        })
    }

    /// Read /proc/self/mountinfo as that namespace sees it (for a namespace
    /// no process lives in, held only by an fd or a bind mount).
    pub fn mountinfo(&self) -> Result<String, String> {
        // The host's /proc, opened before entering: in the namespace, /proc
        // is whatever its owner mounted there.
        let proc_dir = std::fs::File::open("/proc").map_err(|e| format!("/proc: {e}"))?;
        let name = self.name.clone();
        self.inside(move || {
            let tid = nix::unistd::gettid();
            read_at(&proc_dir, &format!("{tid}/mountinfo"))
                .map_err(|e| format!("{name}: mountinfo: {e}"))
        })
    }

    /// Run `f` on a thread of its own that has entered the namespace, and
    /// ends with `f`: the namespace never leaks into the helper's threads.
    fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.name))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("ferry-mntns".into())
            .spawn(move || {
                enter(&fd).map_err(|e| format!("cannot enter {name}: {e}"))?;
                f()
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?
            .join()
            .map_err(|_| format!("the thread in {} panicked", self.name))?
    }
}

impl MountNs {
    /// A namespace file opened some other way (an fd another process holds,
    /// a bind mount of one).
    pub fn from_file(file: std::fs::File) -> Result<MountNs, String> {
        let name = ns_name(&file)?;
        if !name.starts_with("mnt:") {
            return Err(format!("{name} is not a mount namespace"));
        }
        Ok(MountNs { file, name })
    }
}

/// `mnt:[INODE]` of an opened namespace file, as readlink shows it.
fn ns_name(f: &std::fs::File) -> Result<String, String> {
    let ino = f.metadata().map_err(|e| e.to_string())?.ino();
    // NS_GET_NSTYPE would say the kind; the inode alone is what readlink
    // of /proc/PID/ns/mnt shows, and all callers open mount namespaces.
    let ty = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    match ty {
        t if t == libc::CLONE_NEWNS => Ok(format!("mnt:[{ino}]")),
        t if t < 0 => Err(format!("not a namespace file: {}", Errno::last())),
        _ => Ok(format!("other:[{ino}]")),
    }
}

/// Read `rel` below an opened directory (openat: the path never leaves it
/// through the caller's root).
fn read_at(dir: &std::fs::File, rel: &str) -> Result<String, Errno> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(rel).map_err(|_| Errno::EINVAL)?;
    // SAFETY: a valid dirfd and NUL-terminated path; the returned fd is
    // owned by the File from here on.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|_| Errno::EIO)?;
    Ok(text)
}

/// `NS_GET_NSTYPE` from linux/nsfs.h: _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Leave the helper's shared filesystem context, then enter the namespace.
/// Only ever called on a thread that ends right after.
fn enter(ns: &std::fs::File) -> Result<(), Errno> {
    // SAFETY: plain syscalls on this thread's own attributes; the fd is
    // valid for the call (owned by `ns`).
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(Errno::last());
        }
        if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_opens_and_is_named_like_readlink() {
        let pid = std::process::id() as i32;
        let want = std::fs::read_link("/proc/self/ns/mnt")
            .expect("readlink")
            .to_string_lossy()
            .into_owned();
        let ns = MountNs::of_pid(pid, &want).expect("own namespace");
        assert_eq!(ns.name, want);
        assert!(
            MountNs::of_pid(pid, "mnt:[1]").is_err(),
            "a changed namespace is refused"
        );
    }
}
