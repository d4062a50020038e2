//! The action log, in the seed's layout:
//! `18:13:37 INFO    BUSYBOX.FS#1               mount -t ext4 …`.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::Result;

pub fn clock() -> String {
    // SAFETY: localtime_r writes into the tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "--:--:--".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

pub struct Log {
    service: String,
}

impl Log {
    pub fn new(service: &str) -> Log {
        Log {
            service: service.to_string(),
        }
    }

    fn who(&self, rid: Option<&str>) -> String {
        let mut w = self.service.to_uppercase();
        if let Some(r) = rid {
            w.push('.');
            w.push_str(&r.to_uppercase());
        }
        w
    }

    pub fn line(&self, level: &str, rid: Option<&str>, msg: &str) {
        // Never panic on a closed stdout (`| head`, a dropped ssh session):
        // an action half done is worse than a lost log line.
        let _ = writeln!(
            std::io::stdout(),
            "{} {level:<7} {:<27} {msg}",
            clock(),
            self.who(rid)
        );
    }

    pub fn info(&self, rid: Option<&str>, msg: &str) {
        self.line("INFO", rid, msg);
    }

    pub fn warn(&self, rid: Option<&str>, msg: &str) {
        self.line("WARNING", rid, msg);
    }

    pub fn error(&self, rid: Option<&str>, msg: &str) {
        self.line("ERROR", rid, msg);
    }

    /// Run one helper call, print what it did, the last line with its time.
    pub async fn call<F>(&self, rid: &str, fut: F) -> Result<Vec<String>>
    where
        F: Future<Output = zbus::Result<Vec<String>>>,
    {
        let t = Instant::now();
        let lines = fut.await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        for (i, l) in lines.iter().enumerate() {
            if i + 1 == lines.len() {
                self.info(Some(rid), &format!("{l} ({ms:.0} ms)"));
            } else {
                self.info(Some(rid), l);
            }
        }
        Ok(lines)
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From here on, SIGINT and SIGTERM only set a flag that a start checks
/// between resources (it then rolls back); SIGHUP is ignored, so that an
/// operator's dropped session does not cut an action in half.
pub fn guard_signals() {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            let _ = writeln!(
                std::io::stderr(),
                "ferry: interrupted: finishing the current step, then rolling back a start"
            );
        }
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
