//! Running the programs the drivers need: argv only (never a shell), a clean
//! environment, a bounded time, and a log line per command so that a site
//! auditing privileged commands sees each one.

use std::time::Duration;

use tokio::process::Command;
use tracing::info;

use crate::error::{HelperError, Result};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a program may run before it is killed. A filesystem check after
/// a crash can take a long time, and killing it (or LVM in the middle of a
/// metadata update) only makes things worse: those get hours, not a minute.
fn timeout_for(program: &str) -> Duration {
    match program {
        "e2fsck" => Duration::from_secs(24 * 3600),
        "vgchange" | "vgs" | "lvs" | "sg_persist" => Duration::from_secs(3600),
        _ => DEFAULT_TIMEOUT,
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `prog arg…` as a log line shows it.
pub fn display(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn command(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        // LVM warns about every inherited descriptor; ours are CLOEXEC anyway.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Run and capture, whatever the exit code.
pub async fn run(program: &str, args: &[&str]) -> Result<Output> {
    let line = display(program, args);
    info!(target: "exec", "{line}");
    let child = command(program, args).output();
    let limit = timeout_for(program);
    let out = match tokio::time::timeout(limit, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(HelperError::failed(format!("{line}: cannot run: {e}"))),
        Err(_) => {
            return Err(HelperError::failed(format!(
                "{line}: no answer after {} s",
                limit.as_secs()
            )))
        }
    };
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run; a non-zero exit is an error that quotes the command and its stderr.
pub async fn run_ok(program: &str, args: &[&str]) -> Result<Output> {
    let out = run(program, args).await?;
    if out.code != 0 {
        return Err(HelperError::failed(format!(
            "{}: exit {}: {}",
            display(program, args),
            out.code,
            out.stderr.trim()
        )));
    }
    Ok(out)
}
