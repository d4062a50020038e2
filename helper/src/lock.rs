//! The per-service lock that callers hold across many calls (a whole start,
//! stop or relocation): `io.ferry.Helper1.Service.Lock(wait_ms)` / `Unlock()`.
//!
//! It used to be a flock on a file in a world-writable directory, which let
//! anyone without rights block a service (hold the flock) or make root
//! create files elsewhere (plant a symlink as the lock file). Held here, the
//! lock needs its own polkit action to take, and it belongs to the caller's
//! unique bus name: the bus never reuses a unique name, so once that name has
//! left the bus (exit, kill -9, lost ssh session) the lock is free. That is
//! checked lazily with `NameHasOwner` whenever someone else wants the lock,
//! so no watcher task has to live per holder.
//!
//! While a caller holds the lock, every mutating call of any other bus name
//! on that service is refused with `Locked` (see [`crate::auth::privileged`]):
//! a busctl user cannot act in the middle of someone's relocation. With no
//! holder, calls proceed as they always did; the registry's per-call mutex
//! still serializes single calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Caller;
use crate::error::{HelperError, Result};

/// Who holds a service's lock, as recorded when they took it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub sender: String,
    pub uid: u32,
    pub sudo_user: Option<String>,
    pub pid: Option<u32>,
    /// `/proc/PID/comm` when the lock was taken (read then: later the pid
    /// could belong to another process).
    pub comm: Option<String>,
    pub since: SystemTime,
}

impl Holder {
    fn of(caller: &Caller) -> Holder {
        let comm = caller.pid.and_then(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .ok()
                .map(|s| s.trim_end().to_string())
        });
        Holder {
            sender: caller.sender.clone(),
            uid: caller.uid,
            sudo_user: caller.sudo_user.clone(),
            pid: caller.pid,
            comm,
            since: SystemTime::now(),
        }
    }

    /// "uid 2101 (pid 4242 sleep, bus name :1.42) since 2026-11-26 22:51:03 UTC (12 s ago)"
    pub fn describe(&self) -> String {
        let mut who = format!("uid {}", self.uid);
        if let Some(u) = &self.sudo_user {
            who.push_str(&format!(" (sudo by {})", crate::audit::clean(u)));
        }
        let proc_part = match (self.pid, &self.comm) {
            (Some(p), Some(c)) => format!("pid {p} {}, ", crate::audit::clean(c)),
            (Some(p), None) => format!("pid {p}, "),
            _ => String::new(),
        };
        let ago = SystemTime::now()
            .duration_since(self.since)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        format!(
            "{who} ({proc_part}bus name {}) since {} ({ago} s ago)",
            self.sender,
            utc(self.since)
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`, without pulling a date crate into the helper.
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The holders, per service. A std mutex: it is never held across an await.
#[derive(Default)]
pub struct Locks {
    held: Mutex<HashMap<String, Holder>>,
}

enum Attempt {
    Taken,
    AlreadyMine,
    HeldBy(Holder),
}

impl Locks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        // A panic while holding it cannot leave the map half-written.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self, service: &str, caller: &Caller) -> Attempt {
        let mut map = self.map();
        match map.get(service) {
            Some(h) if h.sender == caller.sender => Attempt::AlreadyMine,
            Some(h) => Attempt::HeldBy(h.clone()),
            None => {
                map.insert(service.to_string(), Holder::of(caller));
                Attempt::Taken
            }
        }
    }

    /// Drop the lock if `sender` still holds it; true when it did.
    fn release_if(&self, service: &str, sender: &str) -> bool {
        let mut map = self.map();
        if map.get(service).is_some_and(|h| h.sender == sender) {
            map.remove(service);
            true
        } else {
            false
        }
    }

    pub fn holder(&self, service: &str) -> Option<Holder> {
        self.map().get(service).cloned()
    }
}

/// Is `name` still on the bus? When the bus cannot say, assume it is: a
/// lock is never broken on a guess.
async fn on_bus(conn: &zbus::Connection, name: &str) -> bool {
    let ask = async {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let bus_name = zbus::names::BusName::try_from(name)?;
        Ok::<bool, zbus::Error>(dbus.name_has_owner(bus_name).await?)
    };
    match ask.await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("cannot ask the bus whether {name} is still there: {e}");
            true
        }
    }
}

fn locked(service: &str, node: &str, h: &Holder, waited: Option<Duration>) -> HelperError {
    let wait = match waited {
        Some(w) if !w.is_zero() => format!(" (waited {} ms)", w.as_millis()),
        _ => String::new(),
    };
    HelperError::Locked(format!(
        "service '{service}' on {node} is locked by {}{wait}",
        h.describe()
    ))
}

/// What the holder of a stale lock (a name gone from the bus) left behind:
/// free it, and say so in the log.
fn drop_stale(locks: &Locks, service: &str, h: &Holder) {
    if locks.release_if(service, &h.sender) {
        tracing::info!(
            target: "audit",
            service = %format!("\"{}\"", crate::audit::clean(service)),
            holder = %h.sender,
            "lock released: its holder left the bus"
        );
    }
}

/// Fails with `Locked` when another bus name, still on the bus, holds the
/// service's lock.
pub async fn check_free_for(
    locks: &Locks,
    conn: &zbus::Connection,
    service: &str,
    node: &str,
    caller: &Caller,
) -> Result<()> {
    let Some(h) = locks.holder(service) else {
        return Ok(());
    };
    if h.sender == caller.sender {
        return Ok(());
    }
    if on_bus(conn, &h.sender).await {
        return Err(locked(service, node, &h, None));
    }
    drop_stale(locks, service, &h);
    Ok(())
}

/// How often a waiting Lock looks again.
const POLL: Duration = Duration::from_millis(50);

/// Take the service's lock for `caller`, waiting up to `wait` for the
/// current holder. Returns false when the caller held it already (a no-op).
pub async fn acquire(
    locks: &Locks,
    conn: &zbus::Connection,
    service: &str,
    node: &str,
    caller: &Caller,
    wait: Duration,
) -> Result<bool> {
    let start = tokio::time::Instant::now();
    // u32 milliseconds at most (~49 days): the sum cannot overflow.
    let deadline = start + wait;
    let mut polls: u32 = 0;
    loop {
        match locks.attempt(service, caller) {
            Attempt::Taken => return Ok(true),
            Attempt::AlreadyMine => return Ok(false),
            Attempt::HeldBy(h) => {
                if !on_bus(conn, &h.sender).await {
                    drop_stale(locks, service, &h);
                    continue;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(locked(service, node, &h, Some(now - start)));
                }
                // A waiter that left the bus must not go on to take a lock
                // nobody would release (it would be freed lazily, but there
                // is no point in waiting for it).
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(20) && !on_bus(conn, &caller.sender).await {
                    return Err(HelperError::failed("the caller left the bus"));
                }
                tokio::time::sleep(POLL.min(deadline - now)).await;
            }
        }
    }
}

/// Release the caller's lock. Unlocking a free lock is a no-op (false);
/// another name's lock is refused with `Locked`.
pub fn release(locks: &Locks, service: &str, node: &str, caller: &Caller) -> Result<bool> {
    if locks.release_if(service, &caller.sender) {
        return Ok(true);
    }
    match locks.holder(service) {
        None => Ok(false),
        Some(h) => Err(locked(service, node, &h, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sender: &str) -> Caller {
        Caller {
            uid: 2101,
            sender: sender.into(),
            pid: None,
            sudo_uid: None,
            sudo_user: None,
        }
    }

    #[test]
    fn one_holder_relock_is_a_noop() {
        let l = Locks::default();
        assert!(matches!(l.attempt("s", &caller(":1.1")), Attempt::Taken));
        assert!(matches!(
            l.attempt("s", &caller(":1.1")),
            Attempt::AlreadyMine
        ));
        assert!(
            matches!(l.attempt("s", &caller(":1.2")), Attempt::HeldBy(h) if h.sender == ":1.1")
        );
        assert!(matches!(l.attempt("t", &caller(":1.2")), Attempt::Taken));
        assert!(release(&l, "s", "n", &caller(":1.2")).is_err());
        assert!(release(&l, "s", "n", &caller(":1.1")).unwrap_or(false));
        assert!(!release(&l, "s", "n", &caller(":1.1")).unwrap_or(true));
        assert!(matches!(l.attempt("s", &caller(":1.2")), Attempt::Taken));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_732_263);
        assert_eq!(utc(t), "2026-11-26 22:31:03 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap), "2000-02-29 00:00:00 UTC");
    }
}
