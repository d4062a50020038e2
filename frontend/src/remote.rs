//! Reaching the other nodes: `ssh NODE ferry …`, so that the peer's own
//! helper and polkit decide, or `ssh NODE sudo -n /usr/local/bin/ferry …`
//! where the site delegates through the shipped sudoers drop-in (see
//! sudo/ferry). Connections are shared (ControlMaster), so a sequence of
//! calls pays the ssh handshake once.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use ferry_core::config::{NodeConfig, RemoteMode, DEFAULT_NODE_CONFIG};
use ferry_core::status::ServiceStatus;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::error::{FerryError, Result};

/// The path sudoers names: sudo mode always runs exactly this binary.
pub const FERRY_PATH: &str = "/usr/local/bin/ferry";

pub fn node_config() -> Result<NodeConfig> {
    let path = std::env::var_os("FERRY_NODE_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| DEFAULT_NODE_CONFIG.into());
    NodeConfig::load(&path).map_err(FerryError::Config)
}

/// Quote for the remote shell ssh hands the command to.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '=' | ':' | ',' | '@')
        })
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn control_dir() -> std::path::PathBuf {
    let base = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(".ssh");
    if !dir.exists() {
        let _ = std::fs::create_dir_all(&dir);
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

pub struct Peers {
    conf: NodeConfig,
}

impl Peers {
    pub fn new() -> Result<Peers> {
        Ok(Peers {
            conf: node_config()?,
        })
    }

    pub fn mode(&self, node: &str) -> RemoteMode {
        self.conf.mode_for(node)
    }

    fn ssh(&self, node: &str, remote: &[String]) -> Command {
        let mut c = Command::new("ssh");
        let control = control_dir().join("ferry-%C");
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            &format!("ConnectTimeout={}", self.conf.ssh_connect_timeout),
            "-o",
            "ControlMaster=auto",
            "-o",
            &format!("ControlPath={}", control.display()),
            "-o",
            "ControlPersist=120",
            "-o",
            "ServerAliveInterval=2",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "LogLevel=ERROR",
            "--",
            node,
        ]);
        c.arg(
            remote
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// The remote command line: read-only calls run ferry as the user;
    /// privileged ones go through sudo in sudo mode.
    fn remote_argv(&self, node: &str, privileged: bool, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if privileged && self.mode(node) == RemoteMode::Sudo {
            v.extend(["sudo".into(), "-n".into(), FERRY_PATH.into()]);
        } else {
            v.push("ferry".into());
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Run `ferry ARGS` on `node`, capture its output, bounded in time.
    pub async fn output(
        &self,
        node: &str,
        privileged: bool,
        args: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<std::process::Output> {
        let mut cmd = self.ssh(node, &self.remote_argv(node, privileged, args));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| FerryError::Failed(format!("cannot run ssh: {e}")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| FerryError::Unreachable(format!("{node}: cannot send input: {e}")))?;
        }
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| FerryError::Failed(format!("ssh {node}: {e}")))?,
            Err(_) => {
                return Err(FerryError::Unreachable(format!(
                    "{node} did not answer within {} s",
                    timeout.as_secs()
                )))
            }
        };
        if out.status.code() == Some(255) {
            return Err(FerryError::Unreachable(format!(
                "{node} did not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    /// Run `ferry ARGS` on `node`, printing its output as it comes, each
    /// line prefixed with the node's name. Returns ferry's exit code there.
    pub async fn stream(&self, node: &str, privileged: bool, args: &[&str]) -> Result<i32> {
        let mut cmd = self.ssh(node, &self.remote_argv(node, privileged, args));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| FerryError::Failed(format!("cannot run ssh: {e}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let prefix = node.to_string();
        let p2 = prefix.clone();
        let out_task = tokio::spawn(async move {
            if let Some(s) = stdout {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = writeln!(std::io::stdout(), "{prefix}: {l}");
                }
            }
        });
        let err_task = tokio::spawn(async move {
            if let Some(s) = stderr {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = writeln!(std::io::stderr(), "{p2}: {l}");
                }
            }
        });
        let status = child
            .wait()
            .await
            .map_err(|e| FerryError::Failed(format!("ssh {node}: {e}")))?;
        let _ = out_task.await;
        let _ = err_task.await;
        match status.code() {
            Some(255) => Err(FerryError::Unreachable(format!(
                "{node} did not answer (ssh exit 255)"
            ))),
            Some(c) => Ok(c),
            None => Err(FerryError::Failed(format!("ssh {node} was killed"))),
        }
    }

    /// The service's status on a peer, as that peer's helper sees it.
    pub async fn status(&self, node: &str, service: &str) -> Result<ServiceStatus> {
        let out = self
            .output(
                node,
                false,
                &["status", service, "--local", "--format", "json"],
                None,
                // A status answers in milliseconds: past the connect timeout
                // and a little, the peer is as good as down.
                Duration::from_secs(u64::from(self.conf.ssh_connect_timeout) + 2),
            )
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(2) => return Err(FerryError::Usage(format!("{node}: {}", stderr.trim()))),
            Some(4) => return Err(FerryError::HelperDown(format!("{node}: {}", stderr.trim()))),
            _ => return Err(FerryError::Failed(format!("{node}: {}", stderr.trim()))),
        }
        let mut all: Vec<ServiceStatus> = serde_json::from_slice(&out.stdout)
            .map_err(|e| FerryError::Failed(format!("{node}: unreadable status: {e}")))?;
        all.pop()
            .ok_or_else(|| FerryError::Failed(format!("{node}: empty status for {service}")))
    }
}

/// Map a remote ferry's exit code back to the error kind it stands for.
pub fn remote_error(node: &str, what: &str, code: i32) -> FerryError {
    let msg = format!("{what} on {node} failed (exit {code})");
    match code {
        2 => FerryError::Usage(msg),
        3 => FerryError::NotAuthorized(msg),
        4 => FerryError::HelperDown(msg),
        5 => FerryError::Unreachable(msg),
        _ => FerryError::Failed(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_for_the_remote_shell() {
        assert_eq!(quote("busybox"), "busybox");
        assert_eq!(quote("ip#1"), "'ip#1'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x'y"), "'x'\\''y'");
        assert_eq!(quote(""), "''");
    }
}
