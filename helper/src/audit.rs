//! The audit log: every record about a privileged call goes through
//! [`record`], so every record is shaped, escaped and bounded the same way.
//!
//! Callers choose many of the strings that end up here (a service name sent
//! to InstallConfig, docker arguments, error messages quoting them). Written
//! raw, an embedded newline would write a complete, forged audit line, and a
//! huge argument would fill the disk. So every caller-influenced string is
//! escaped (control characters, quotes and backslashes, as Rust's
//! `escape_debug` does) and cut at a bound, with the original size noted.
//! Field values are quoted after escaping, so a value can never end early.
//!
//! Denied calls cost a caller without rights nothing, so they are bounded
//! per caller uid: the first [`DENIED_BURST`] of a [`DENIED_WINDOW`] are
//! written one by one, the rest are counted and written as one line
//! ("N more denied calls from uid X…") when the window ends. Otherwise a
//! flood of refused calls would make journald's rate limit drop records,
//! the real ones among them. Records of authorized calls (ok, allowed,
//! failed) and of root are never held back.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::auth::Caller;
use crate::error::HelperError;

/// The most characters of one field value that reach the log.
pub const FIELD_MAX: usize = 256;
/// The most characters of a record's message (an error message quotes
/// other things, so it may be longer than one field).
pub const MESSAGE_MAX: usize = 512;
/// The most docker arguments listed in one record.
const ARGS_MAX: usize = 32;

/// `s` escaped (no control character, quote or backslash left raw) and cut
/// after `max` characters of escaped text, with a note of the full size.
pub fn clean_max(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    let mut n = 0;
    for c in s.chars() {
        // A single quote is harmless inside the double-quoted values: left
        // as is, messages that quote names stay readable.
        let escaped = if c == '\'' {
            '\''.to_string()
        } else {
            c.escape_debug().to_string()
        };
        for e in escaped.chars() {
            if n == max {
                out.push_str(&format!("…({} bytes)", s.len()));
                return out;
            }
            out.push(e);
            n += 1;
        }
    }
    out
}

/// [`clean_max`] with the field bound.
pub fn clean(s: &str) -> String {
    clean_max(s, FIELD_MAX)
}

/// A field value as it is written: escaped, bounded, in double quotes.
fn quoted(s: &str) -> String {
    format!("\"{}\"", clean(s))
}

/// A list of caller arguments, each escaped and bounded, the list bounded too.
pub fn clean_args(args: &[String]) -> String {
    let mut v: Vec<String> = args.iter().take(ARGS_MAX).map(|a| quoted(a)).collect();
    if args.len() > ARGS_MAX {
        v.push(format!("…({} arguments)", args.len()));
    }
    format!("[{}]", v.join(", "))
}

/// How a privileged call ended, as the `result` field says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before anything was done: polkit, a bad argument, the lock.
    Denied,
    /// Authorized; what follows runs outside the record (docker passthrough).
    Allowed,
    /// Done.
    Ok,
    /// Authorized, tried, and failed.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Allowed => "allowed",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

/// One audit record.
pub struct Record<'a> {
    /// None when the caller could not be identified.
    pub caller: Option<&'a Caller>,
    pub action: &'a str,
    pub service: &'a str,
    pub rid: &'a str,
    pub outcome: Outcome,
    pub error: Option<&'a HelperError>,
    /// The docker passthrough's arguments.
    pub args: Option<&'a [String]>,
    /// Free text for records without an error (e.g. who held a lock).
    pub note: Option<&'a str>,
}

impl<'a> Record<'a> {
    pub fn new(
        caller: Option<&'a Caller>,
        action: &'a str,
        service: &'a str,
        rid: &'a str,
        outcome: Outcome,
    ) -> Self {
        Record {
            caller,
            action,
            service,
            rid,
            outcome,
            error: None,
            args: None,
            note: None,
        }
    }

    pub fn error(mut self, e: &'a HelperError) -> Self {
        self.error = Some(e);
        self
    }

    pub fn args(mut self, a: &'a [String]) -> Self {
        self.args = Some(a);
        self
    }

    pub fn note(mut self, n: &'a str) -> Self {
        self.note = Some(n);
        self
    }

    /// Write it (see [`record`]).
    pub fn log(self) {
        record(&self)
    }
}

/// Denied records written one by one per uid and window.
pub const DENIED_BURST: u32 = 20;
/// The window of [`DENIED_BURST`].
pub const DENIED_WINDOW: Duration = Duration::from_secs(60);
/// Callers whose windows are tracked at most; expired ones go first.
const DENIED_UIDS_MAX: usize = 4096;

/// One uid's denied calls in its current window.
struct Window {
    start: Instant,
    written: u32,
    held_back: u32,
}

/// What to do with one denied record.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Write it; first write the summary of the uid's last window, if that
    /// held any back and was not summed up yet.
    Write { summary: Option<u32> },
    /// Count it. `first` when it is the first held back in this window
    /// (time to arrange the summary).
    HoldBack { first: bool },
}

#[derive(Default)]
struct DeniedLimiter {
    windows: HashMap<u32, Window>,
}

impl DeniedLimiter {
    fn admit(&mut self, uid: u32, now: Instant) -> Admit {
        if self.windows.len() >= DENIED_UIDS_MAX {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.start) < DENIED_WINDOW);
        }
        let w = self.windows.entry(uid).or_insert(Window {
            start: now,
            written: 0,
            held_back: 0,
        });
        let mut summary = None;
        if now.saturating_duration_since(w.start) >= DENIED_WINDOW {
            summary = (w.held_back > 0).then_some(w.held_back);
            *w = Window {
                start: now,
                written: 0,
                held_back: 0,
            };
        }
        if w.written < DENIED_BURST {
            w.written += 1;
            Admit::Write { summary }
        } else {
            w.held_back += 1;
            Admit::HoldBack {
                first: w.held_back == 1,
            }
        }
    }

    /// The count held back in the window that started at `start`, taken
    /// (so it is summed up once).
    fn take_held_back(&mut self, uid: u32, start: Instant) -> u32 {
        match self.windows.get_mut(&uid) {
            Some(w) if w.start == start => std::mem::take(&mut w.held_back),
            _ => 0,
        }
    }

    fn window_start(&self, uid: u32) -> Option<Instant> {
        self.windows.get(&uid).map(|w| w.start)
    }
}

fn limiter() -> std::sync::MutexGuard<'static, DeniedLimiter> {
    static L: OnceLock<Mutex<DeniedLimiter>> = OnceLock::new();
    L.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn write_summary(uid: u32, n: u32) {
    warn!(
        target: "audit",
        uid = %uid,
        result = "denied",
        "{n} more denied calls from uid {uid} within {} s were not logged one by one",
        DENIED_WINDOW.as_secs()
    );
}

/// Whether a denied record of `uid` is written now (see the module doc).
fn admit_denied(uid: u32) -> bool {
    let now = Instant::now();
    let admit = limiter().admit(uid, now);
    match admit {
        Admit::Write { summary } => {
            if let Some(n) = summary {
                write_summary(uid, n);
            }
            true
        }
        Admit::HoldBack { first } => {
            // Sum up when the window ends, even if this uid calls no more.
            if first {
                if let (Ok(rt), Some(start)) = (
                    tokio::runtime::Handle::try_current(),
                    limiter().window_start(uid),
                ) {
                    rt.spawn(async move {
                        tokio::time::sleep_until((start + DENIED_WINDOW).into()).await;
                        let n = limiter().take_held_back(uid, start);
                        if n > 0 {
                            write_summary(uid, n);
                        }
                    });
                }
            }
            false
        }
    }
}

/// Write one audit record (target `audit`): `info` when it went through,
/// `warn` when it was refused or failed.
pub fn record(r: &Record<'_>) {
    if r.outcome == Outcome::Denied {
        // Unidentified callers share one bucket.
        let uid = r.caller.map(|c| c.uid).unwrap_or(u32::MAX);
        if uid != 0 && !admit_denied(uid) {
            return;
        }
    }
    let uid = r
        .caller
        .map(|c| c.uid.to_string())
        .unwrap_or_else(|| "?".into());
    let sender = r.caller.map(|c| quoted(&c.sender));
    let pid = r.caller.and_then(|c| c.pid);
    let sudo_uid = r.caller.and_then(|c| c.sudo_uid.as_deref()).map(quoted);
    let sudo_user = r.caller.and_then(|c| c.sudo_user.as_deref()).map(quoted);
    let action = quoted(r.action);
    let service = quoted(r.service);
    let rid = quoted(r.rid);
    let args = r.args.map(clean_args);
    let kind = r.error.map(HelperError::kind);
    // Quoted too: unquoted, an escaped message could still carry text that
    // reads like the record's own fields (`uid=0 result="ok"`).
    let message = match (r.error, r.note) {
        (Some(e), _) => format!("\"{}\"", clean_max(&e.message(), MESSAGE_MAX)),
        (None, Some(n)) => format!("\"{}\"", clean_max(n, MESSAGE_MAX)),
        (None, None) => String::new(),
    };
    // One macro call per level: tracing needs the level at compile time.
    macro_rules! emit {
        ($level:ident) => {
            $level!(
                target: "audit",
                uid = %uid,
                sudo_uid = sudo_uid.as_ref().map(tracing::field::display),
                sudo_user = sudo_user.as_ref().map(tracing::field::display),
                pid,
                sender = sender.as_ref().map(tracing::field::display),
                action = %action,
                service = %service,
                rid = %rid,
                args = args.as_ref().map(tracing::field::display),
                result = r.outcome.as_str(),
                error = kind,
                "{message}"
            )
        };
    }
    match r.outcome {
        Outcome::Ok | Outcome::Allowed => emit!(info),
        Outcome::Denied | Outcome::Failed => emit!(warn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_quotes_and_backslashes_are_escaped() {
        let forged = "x\" result=\"ok\"\n2026-01-01T00:00:00Z  INFO audit: uid=0 \\ \u{1b}[31m";
        let c = clean(forged);
        assert!(!c.contains('\n'));
        assert!(!c.contains('\u{1b}'));
        // every quote is preceded by a backslash: a quoted value cannot end early
        assert!(!c.replace("\\\\", "").replace("\\\"", "").contains('"'));
        assert!(c.contains("\\n"));
        assert_eq!(clean("service 'a'\t"), "service 'a'\\t");
    }

    #[test]
    fn long_values_are_bounded() {
        let long = "a".repeat(120 * 1024);
        let c = clean(&long);
        assert!(c.len() < FIELD_MAX + 32, "{}", c.len());
        assert!(c.ends_with("…(122880 bytes)"));
        // a bound in the middle of an escape stays bounded, too
        let c = clean(&"\n".repeat(10_000));
        assert!(c.chars().count() <= FIELD_MAX + 20);
        assert_eq!(clean("busybox"), "busybox");
    }

    #[test]
    fn denied_records_are_bounded_per_uid() {
        let mut l = DeniedLimiter::default();
        let t0 = Instant::now();
        for _ in 0..DENIED_BURST {
            assert_eq!(l.admit(2100, t0), Admit::Write { summary: None });
        }
        assert_eq!(l.admit(2100, t0), Admit::HoldBack { first: true });
        for _ in 0..998 {
            assert_eq!(l.admit(2100, t0), Admit::HoldBack { first: false });
        }
        // another uid has its own window
        assert_eq!(l.admit(2101, t0), Admit::Write { summary: None });
        // the next window writes again, after the last one's summary
        let t1 = t0 + DENIED_WINDOW;
        assert_eq!(l.admit(2100, t1), Admit::Write { summary: Some(999) });
        assert_eq!(l.admit(2100, t1), Admit::Write { summary: None });
        // a summary taken by the timer is not written twice
        for _ in 2..DENIED_BURST {
            assert!(matches!(l.admit(2100, t1), Admit::Write { .. }));
        }
        assert_eq!(l.admit(2100, t1), Admit::HoldBack { first: true });
        assert_eq!(l.take_held_back(2100, t1), 1);
        assert_eq!(l.take_held_back(2100, t1), 0);
        let t2 = t1 + DENIED_WINDOW;
        assert_eq!(l.admit(2100, t2), Admit::Write { summary: None });
    }

    #[test]
    fn argument_lists_are_bounded() {
        let many: Vec<String> = (0..1000).map(|i| format!("a{i}\n")).collect();
        let c = clean_args(&many);
        assert!(!c.contains('\n'));
        assert!(c.ends_with("…(1000 arguments)]"));
    }
}
