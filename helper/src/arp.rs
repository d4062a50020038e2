//! ARP on a raw packet socket: the free-address probe (RFC 5227 style, with
//! a window of our own instead of arping's whole seconds) and the gratuitous
//! announcement. Blocking: call from `spawn_blocking`.
//!
//! One socket per interface stays open for the helper's lifetime: opening
//! and closing a packet socket waits for an RCU grace period in the kernel
//! (8–24 ms measured in the lab), twice per start otherwise.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const FRAME_LEN: usize = 42;

/// Who answered for an address: their hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

struct Link {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

type SharedLink = Arc<Mutex<Link>>;

/// Open links by interface name.
static LINKS: Mutex<Vec<(String, SharedLink)>> = Mutex::new(Vec::new());

fn ifindex_of(ifname: &str) -> io::Result<i32> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("no device {ifname}: {e}")));
    }
    Ok(idx as i32)
}

/// The cached link of `ifname`, reopened when the interface was recreated
/// (its index changed) or its address changed.
fn link(ifname: &str) -> io::Result<SharedLink> {
    let idx = ifindex_of(ifname)?;
    let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, l)) = links.iter().find(|(n, _)| n == ifname) {
        let current = l.lock().unwrap_or_else(|p| p.into_inner());
        if current.ifindex == idx && hwaddr(&current.fd, ifname)? == current.mac {
            return Ok(l.clone());
        }
    }
    let fresh = Arc::new(Mutex::new(open_link(ifname)?));
    links.retain(|(n, _)| n != ifname);
    links.push((ifname.to_string(), fresh.clone()));
    Ok(fresh)
}

fn hwaddr(fd: &OwnedFd, ifname: &str) -> io::Result<[u8; 6]> {
    let name = ifname_bytes(ifname)?;
    // SAFETY: an ifreq we own, filled by the kernel; the return code is checked.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name = name;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(req.ifr_ifru.ifru_hwaddr.sa_data.iter()) {
            *d = *s as u8;
        }
        Ok(mac)
    }
}

/// One non-blocking read. `Ok(None)`: nothing left to read. A pending
/// socket error (ENETDOWN after the link went down and up) is reported
/// once and cleared by the read that returns it, so it is skipped: the
/// frames queued behind it must still be read.
fn recv_frame(link: &Link, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // Bounded: a socket cannot hold more pending errors than this in a row.
    for _ in 0..8 {
        // SAFETY: reading into a buffer we own, its length given; non-blocking.
        let n = unsafe {
            libc::recv(
                link.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR | libc::ENETDOWN | libc::ENXIO) => continue,
            _ => return Err(e),
        }
    }
    Ok(None)
}

/// Throw away frames that arrived since the last use of the socket: an old
/// announcement by the previous owner must not read as an answer now.
fn drain(link: &Link) -> io::Result<()> {
    let mut buf = [0u8; 128];
    while recv_frame(link, &mut buf)?.is_some() {}
    Ok(())
}

fn ifname_bytes(ifname: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{ifname}' is not an interface name"),
        ));
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(name)
}

fn open_link(ifname: &str) -> io::Result<Link> {
    let name = ifname_bytes(ifname)?;
    // SAFETY: plain syscalls on values we own; every return code is checked.
    unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            (ETH_P_ARP.to_be()) as i32,
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);

        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name = name;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("no device {ifname}: {e}")));
        }
        let ifindex = req.ifr_ifru.ifru_ifindex;
        let mac = hwaddr(&fd, ifname)?;

        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Link { fd, ifindex, mac })
    }
}

/// A broadcast ARP request: sender `spa` (0.0.0.0 for a probe), target `tpa`.
fn request_frame(mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&spa.octets());
    // tha stays zero
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

fn send(link: &Link, frame: &[u8]) -> io::Result<()> {
    // SAFETY: sendto with a sockaddr_ll we fill; the return code is checked.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = link.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            link.fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Does this frame say that someone else uses `addr`, or wants it? A reply
/// or request whose sender address is `addr`, or (RFC 5227 §2.1.1) another
/// host's probe for `addr` at the same moment, from another hardware
/// address. Two nodes probing at once must not both conclude it is free.
fn claims(frame: &[u8], addr: Ipv4Addr, own: [u8; 6]) -> Option<Mac> {
    if frame.len() < FRAME_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let op = u16::from_be_bytes([frame[20], frame[21]]);
    if op != ARP_REPLY && op != ARP_REQUEST {
        return None;
    }
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&frame[22..28]);
    let spa = Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]);
    let tpa = Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]);
    let uses = spa == addr;
    let probes = op == ARP_REQUEST && spa.is_unspecified() && tpa == addr;
    ((uses || probes) && sha != own).then_some(Mac(sha))
}

/// Probe the wire for `addr` on `ifname`: two probes, at the start and the
/// middle of the window, listening for the whole window. `Some(mac)` when
/// another host answers.
pub fn probe(ifname: &str, addr: Ipv4Addr, window: Duration) -> io::Result<Option<Mac>> {
    let shared = link(ifname)?;
    // One probe at a time per link: each must see every answer.
    let link = shared.lock().unwrap_or_else(|p| p.into_inner());
    drain(&link)?;
    let frame = request_frame(link.mac, Ipv4Addr::UNSPECIFIED, addr);
    let start = Instant::now();
    send(&link, &frame)?;
    let mut second_sent = false;
    let mut buf = [0u8; 128];
    loop {
        let elapsed = start.elapsed();
        if elapsed >= window {
            return Ok(None);
        }
        if !second_sent && elapsed >= window / 2 {
            send(&link, &frame)?;
            second_sent = true;
        }
        let next_stop = if second_sent { window } else { window / 2 };
        let wait = next_stop
            .saturating_sub(elapsed)
            .max(Duration::from_millis(1));
        let mut pfd = libc::pollfd {
            fd: link.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        while let Some(n) = recv_frame(&link, &mut buf)? {
            if let Some(mac) = claims(&buf[..n], addr, link.mac) {
                return Ok(Some(mac));
            }
        }
    }
}

/// A gratuitous ARP request (sender = target = `addr`), so that neighbours
/// update their caches to this host at once.
pub fn announce(ifname: &str, addr: Ipv4Addr) -> io::Result<()> {
    let shared = link(ifname)?;
    let link = shared.lock().unwrap_or_else(|p| p.into_inner());
    send(&link, &request_frame(link.mac, addr, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_and_claims() {
        let own = [2, 0, 0, 0, 0, 1];
        let other = [2, 0, 0, 0, 0, 2];
        let addr = Ipv4Addr::new(203, 0, 113, 25);
        let probe = request_frame(own, Ipv4Addr::UNSPECIFIED, addr);
        assert_eq!(&probe[38..42], &[203, 0, 113, 25]);
        // our own probe claims nothing; another host probing for the same
        // address at the same moment is a conflict (RFC 5227)
        assert_eq!(claims(&probe, addr, own), None);
        let theirs = request_frame(other, Ipv4Addr::UNSPECIFIED, addr);
        assert_eq!(claims(&theirs, addr, own), Some(Mac(other)));
        // another host's probe for some other address is none of our business
        let elsewhere = request_frame(other, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(203, 0, 113, 99));
        assert_eq!(claims(&elsewhere, addr, own), None);
        // another host announcing the address does
        assert_eq!(
            claims(&request_frame(other, addr, addr), addr, own),
            Some(Mac(other))
        );
        let mut reply = request_frame(other, addr, Ipv4Addr::new(203, 0, 113, 11));
        reply[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        assert_eq!(claims(&reply, addr, own), Some(Mac(other)));
        assert!(ifname_bytes("a-very-long-interface-name").is_err());
    }
}
