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

/// Where the helper's own programs come from: root's directories in the
/// helper's own mount namespace, never the caller's `PATH`.
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The program as an absolute path found in `path`, refused unless root
/// owns the file and every directory on the way to it, and nobody else may
/// write any of them (as sudo's secure_path, and stricter): the helper runs
/// it as root. Resolved at each call, so a replaced binary is seen.
pub fn trusted_program(program: &str, path: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let found = path
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| HelperError::failed(format!("{program}: not found in {path}")))?;
    // The program as found is what runs (a multi-call binary such as lvm
    // reads its name from there); the directory it was found in and the
    // file it resolves to must both be root's alone.
    let real = std::fs::canonicalize(&found)
        .map_err(|e| HelperError::failed(format!("{}: {e}", found.display())))?;
    let dir = found
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .ok_or_else(|| HelperError::failed(format!("{}: no directory", found.display())))?;
    for p in real.ancestors().chain(dir.ancestors()) {
        let m = std::fs::metadata(p)
            .map_err(|e| HelperError::failed(format!("{}: {e}", p.display())))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(HelperError::failed(format!(
                "refusing to run {}: {} is {} (uid {}, mode {:o}); \
                 the helper runs only programs that root alone can change",
                real.display(),
                p.display(),
                if m.uid() != 0 {
                    "not owned by root"
                } else {
                    "writable by others"
                },
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(found)
}

pub fn command(program: &str, args: &[&str]) -> Command {
    // A program that fails the check is still named, so that spawning it
    // fails with "cannot run" and the reason is logged.
    let resolved = trusted_program(program, SYSTEM_PATH).unwrap_or_else(|e| {
        tracing::warn!(target: "exec", "{}", e.message());
        std::path::PathBuf::from(format!("/nonexistent/untrusted/{program}"))
    });
    let mut c = Command::new(resolved);
    c.arg0(program)
        .args(args)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_root_alone_can_change_are_trusted() {
        let sh = trusted_program("sh", SYSTEM_PATH).expect("sh is root's");
        assert!(sh.is_absolute());
        assert!(trusted_program("no-such-program-ferry", SYSTEM_PATH).is_err());
        // a directory anyone can write (sticky /tmp) is refused
        let dir = std::env::temp_dir().join(format!("ferry-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::copy(&sh, dir.join("sh")).expect("copy");
        let path = dir.display().to_string();
        let err = trusted_program("sh", &path).expect_err("in /tmp");
        assert!(
            err.message().contains("refusing to run"),
            "{}",
            err.message()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
