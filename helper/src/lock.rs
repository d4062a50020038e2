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
//!
//! A holder that stays on the bus but does nothing (an operator's client
//! left idle) would otherwise block root and Pacemaker for as long as its
//! connection lives, and a failed Pacemaker stop means fencing. So
//! `BreakLock(wait_ms)` (its own polkit action) waits up to `wait_ms`, then
//! takes the lock from a holder that is *idle*: no call of it running, and
//! none for [`IDLE_BEFORE_BREAK`]. A holder in the middle of a call is never
//! broken (the call runs under the per-service mutex, which the breaker
//! takes too), nor one whose calls follow each other (a running start or
//! stop). The break is audited, and the old holder's next call fails with
//! `LockBroken`, naming who broke it, until it takes the lock again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// The holder's calls on the service running now.
    in_flight: u32,
    /// When the holder last started or ended a call (or took the lock).
    last_active: Instant,
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
            in_flight: 0,
            last_active: Instant::now(),
        }
    }

    /// No call of the holder running, and none for `idle`.
    fn idle_for(&self, idle: Duration, now: Instant) -> bool {
        self.in_flight == 0 && now.saturating_duration_since(self.last_active) >= idle
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

/// A holder counts as idle, and its lock may be broken, once no call of it
/// has run for this long. Far more than the gap between two calls of a
/// running start or stop (milliseconds), far less than Pacemaker's stop
/// timeout.
pub const IDLE_BEFORE_BREAK: Duration = Duration::from_secs(2);

/// At most this many broken-lock notes are kept (one per broken holder
/// until it locks again); the oldest go first.
const BROKEN_MAX: usize = 64;

/// What a holder whose lock was broken is told at its next call.
#[derive(Clone, Debug)]
struct Broken {
    service: String,
    sender: String,
    note: String,
}

#[derive(Default)]
struct State {
    held: HashMap<String, Holder>,
    broken: Vec<Broken>,
}

/// The holders, per service. A std mutex: it is never held across an await.
#[derive(Default)]
pub struct Locks {
    state: Mutex<State>,
}

enum Attempt {
    Taken,
    AlreadyMine,
    HeldBy(Holder),
}

/// What [`Locks::try_break`] did.
#[derive(Debug)]
enum BreakAttempt {
    Taken,
    AlreadyMine,
    /// The idle holder's lock, now the caller's.
    Broke(Holder),
    /// Held by a holder that is not idle.
    Busy(Holder),
}

impl Locks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it cannot leave the map half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self, service: &str, caller: &Caller) -> Attempt {
        let mut st = self.state();
        match st.held.get(service) {
            Some(h) if h.sender == caller.sender => Attempt::AlreadyMine,
            Some(h) => Attempt::HeldBy(h.clone()),
            None => {
                st.broken
                    .retain(|b| !(b.service == service && b.sender == caller.sender));
                st.held.insert(service.to_string(), Holder::of(caller));
                Attempt::Taken
            }
        }
    }

    /// Take the lock for `caller`; a holder idle for `idle` loses it to
    /// the caller, and is noted as broken.
    fn try_break(&self, service: &str, caller: &Caller, idle: Duration) -> BreakAttempt {
        let now = Instant::now();
        let mut st = self.state();
        let old = match st.held.get(service) {
            None => None,
            Some(h) if h.sender == caller.sender => return BreakAttempt::AlreadyMine,
            Some(h) if !h.idle_for(idle, now) => return BreakAttempt::Busy(h.clone()),
            Some(h) => Some(h.clone()),
        };
        st.broken
            .retain(|b| !(b.service == service && b.sender == caller.sender));
        let new = Holder::of(caller);
        if let Some(h) = &old {
            let idle_s = now.saturating_duration_since(h.last_active).as_secs();
            let note = format!(
                "the lock of service '{service}' held by this connection ({}) was broken after \
                 {idle_s} s idle by {}",
                h.sender,
                new.describe()
            );
            if st.broken.len() >= BROKEN_MAX {
                st.broken.remove(0);
            }
            st.broken.push(Broken {
                service: service.to_string(),
                sender: h.sender.clone(),
                note,
            });
        }
        st.held.insert(service.to_string(), new);
        match old {
            Some(h) => BreakAttempt::Broke(h),
            None => BreakAttempt::Taken,
        }
    }

    /// The note for `sender` if its lock of `service` was broken.
    fn broken_for(&self, service: &str, sender: &str) -> Option<String> {
        self.state()
            .broken
            .iter()
            .find(|b| b.service == service && b.sender == sender)
            .map(|b| b.note.clone())
    }

    /// Drop the lock if `sender` still holds it; true when it did.
    fn release_if(&self, service: &str, sender: &str) -> bool {
        let mut st = self.state();
        if st.held.get(service).is_some_and(|h| h.sender == sender) {
            st.held.remove(service);
            true
        } else {
            false
        }
    }

    pub fn holder(&self, service: &str) -> Option<Holder> {
        self.state().held.get(service).cloned()
    }

    /// Mark a call of `sender` on `service` as running, when `sender` holds
    /// the lock: until the returned guard drops, the lock cannot be broken.
    pub fn activity<'a>(&'a self, service: &str, sender: &str) -> Activity<'a> {
        let mut st = self.state();
        let mine = match st.held.get_mut(service) {
            Some(h) if h.sender == sender => {
                h.in_flight += 1;
                h.last_active = Instant::now();
                true
            }
            _ => false,
        };
        Activity {
            locks: self,
            service: service.to_string(),
            sender: sender.to_string(),
            mine,
        }
    }
}

/// A running call of the lock's holder (see [`Locks::activity`]); dropped
/// when the call ends, however it ends.
pub struct Activity<'a> {
    locks: &'a Locks,
    service: String,
    sender: String,
    mine: bool,
}

impl Drop for Activity<'_> {
    fn drop(&mut self) {
        if !self.mine {
            return;
        }
        let mut st = self.locks.state();
        if let Some(h) = st.held.get_mut(&self.service) {
            if h.sender == self.sender {
                h.in_flight = h.in_flight.saturating_sub(1);
                h.last_active = Instant::now();
            }
        }
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
/// service's lock, and with `LockBroken` when the caller's own lock was
/// broken (until it takes the lock again).
pub async fn check_free_for(
    locks: &Locks,
    conn: &zbus::Connection,
    service: &str,
    node: &str,
    caller: &Caller,
) -> Result<()> {
    if let Some(note) = locks.broken_for(service, &caller.sender) {
        return Err(HelperError::LockBroken(format!(
            "{note}: this caller no longer holds service '{service}' on {node}"
        )));
    }
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

/// What [`acquire_breaking`] did.
pub enum Taken {
    /// The lock was free, or became free within the wait.
    Free,
    /// The caller held it already.
    AlreadyMine,
    /// The idle holder's lock was broken.
    Broke(Holder),
}

/// Take the service's lock for `caller`, waiting up to `wait` for its
/// holder to let go; then break it if the holder is idle (see the module
/// doc). The break happens under the per-service mutex, so no call of the
/// holder runs meanwhile (the wait does not: the holder's calls go on).
/// A holder still busy when the wait ends keeps it: `Locked`.
pub async fn acquire_breaking(
    reg: &crate::registry::Registry,
    conn: &zbus::Connection,
    service: &str,
    caller: &Caller,
    wait: Duration,
) -> Result<Taken> {
    let (locks, node) = (reg.holds(), reg.node());
    match acquire(locks, conn, service, node, caller, wait).await {
        Ok(true) => return Ok(Taken::Free),
        Ok(false) => return Ok(Taken::AlreadyMine),
        Err(HelperError::Locked(_)) => {}
        Err(e) => return Err(e),
    }
    let _serial = reg.lock_service(service).await;
    match locks.try_break(service, caller, IDLE_BEFORE_BREAK) {
        BreakAttempt::Taken => Ok(Taken::Free),
        BreakAttempt::AlreadyMine => Ok(Taken::AlreadyMine),
        BreakAttempt::Broke(h) => Ok(Taken::Broke(h)),
        BreakAttempt::Busy(h) => Err(HelperError::Locked(format!(
            "service '{service}' on {node} is locked by {}, which is in the middle of an \
             action (a call running or one within {} s): a lock is not broken halfway \
             through an action; try again",
            h.describe(),
            IDLE_BEFORE_BREAK.as_secs()
        ))),
    }
}

/// Release the caller's lock. Unlocking a free lock is a no-op (false);
/// another name's lock is refused with `Locked`.
pub fn release(locks: &Locks, service: &str, node: &str, caller: &Caller) -> Result<bool> {
    if locks.release_if(service, &caller.sender) {
        return Ok(true);
    }
    if let Some(note) = locks.broken_for(service, &caller.sender) {
        return Err(HelperError::LockBroken(format!("{note} (on {node})")));
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
    fn only_an_idle_holder_is_broken_and_learns_it() {
        let l = Locks::default();
        assert!(matches!(l.attempt("s", &caller(":1.1")), Attempt::Taken));
        // just taken: not idle for a second yet
        assert!(matches!(
            l.try_break("s", &caller(":1.9"), Duration::from_secs(1)),
            BreakAttempt::Busy(h) if h.sender == ":1.1"
        ));
        // a call of the holder running: never broken, however long it runs
        let running = l.activity("s", ":1.1");
        assert!(matches!(
            l.try_break("s", &caller(":1.9"), Duration::ZERO),
            BreakAttempt::Busy(_)
        ));
        drop(running);
        // a call of someone else does not count as the holder's
        let other = l.activity("s", ":1.5");
        assert!(matches!(
            l.try_break("s", &caller(":1.9"), Duration::ZERO),
            BreakAttempt::Broke(h) if h.sender == ":1.1"
        ));
        drop(other);
        assert_eq!(l.holder("s").map(|h| h.sender).as_deref(), Some(":1.9"));
        let note = l.broken_for("s", ":1.1").unwrap_or_default();
        assert!(
            note.contains("was broken after 0 s idle by uid 2101"),
            "{note}"
        );
        assert!(l.broken_for("s", ":1.9").is_none());
        assert!(l.broken_for("t", ":1.1").is_none());
        // the old holder takes the lock again (once free): the note is gone
        assert!(release(&l, "s", "n", &caller(":1.9")).unwrap_or(false));
        assert!(matches!(l.attempt("s", &caller(":1.1")), Attempt::Taken));
        assert!(l.broken_for("s", ":1.1").is_none());
        // breaking a free lock just takes it
        assert!(matches!(
            l.try_break("u", &caller(":1.9"), Duration::ZERO),
            BreakAttempt::Taken
        ));
    }

    #[test]
    fn broken_notes_are_bounded() {
        let l = Locks::default();
        for i in 0..(BROKEN_MAX + 10) {
            let svc = format!("s{i}");
            assert!(matches!(l.attempt(&svc, &caller(":1.1")), Attempt::Taken));
            assert!(matches!(
                l.try_break(&svc, &caller(":1.2"), Duration::ZERO),
                BreakAttempt::Broke(_)
            ));
        }
        assert_eq!(l.state().broken.len(), BROKEN_MAX);
        assert!(l.broken_for("s0", ":1.1").is_none());
        assert!(l
            .broken_for(&format!("s{}", BROKEN_MAX + 9), ":1.1")
            .is_some());
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
