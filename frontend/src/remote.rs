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
        self.spawn_streaming(node, privileged, args, false)?
            .wait()
            .await
    }

    /// `ferry start SERVICE --wait-go` on `node`, once it said it is ready:
    /// connected to its helper, holding the service's lock there, waiting
    /// for [`RemoteRun::go`]. A relocation opens it before it stops the
    /// service here, so the ssh session, the process and the lock are not
    /// part of the downtime, and nobody acts on the service there between
    /// the check and the start.
    pub async fn start_on_go(&self, node: &str, service: &str) -> Result<RemoteRun> {
        let mut run = self.spawn_streaming(node, true, &["start", service, "--wait-go"], true)?;
        // Reaching the node, then a process start and a lock: past the
        // connect timeout and a little more, it is as good as down.
        let bound = Duration::from_secs(u64::from(self.conf.ssh_connect_timeout) + 5);
        run.ready(bound).await?;
        Ok(run)
    }

    fn spawn_streaming(
        &self,
        node: &str,
        privileged: bool,
        args: &[&str],
        go: bool,
    ) -> Result<RemoteRun> {
        let mut cmd = self.ssh(node, &self.remote_argv(node, privileged, args));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if go {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| FerryError::Failed(format!("cannot run ssh: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let prefix = node.to_string();
        let p2 = prefix.clone();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let out_task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            if let Some(s) = stdout {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == READY {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                            continue;
                        }
                    }
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
        Ok(RemoteRun {
            node: node.to_string(),
            child,
            stdin,
            ready,
            out_task,
            err_task,
        })
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

/// The line `ferry start --wait-go` prints once it is ready for the go.
pub const READY: &str = "ready: connected and locked, waiting for go";
/// The line that makes it start; anything else, or end of input, calls the
/// start off.
pub const GO: &str = "go";

/// The remote side of [`Peers::start_on_go`]: say [`READY`], then wait for
/// the go. False when the input ends or says anything else (the relocating
/// node's stop failed, or it is gone): the start is called off.
pub async fn ready_for_go() -> bool {
    println!("{READY}");
    let _ = std::io::stdout().flush();
    // Read off the runtime's thread: the bus connection keeps being served.
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    matches!(line, Ok(Ok(l)) if l.trim_end() == GO)
}

/// A `ferry` running on a peer, its output streamed here line by line.
pub struct RemoteRun {
    node: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    ready: tokio::sync::oneshot::Receiver<()>,
    out_task: tokio::task::JoinHandle<()>,
    err_task: tokio::task::JoinHandle<()>,
}

impl RemoteRun {
    /// Until the remote ferry printed [`READY`]; an error if it ended first
    /// (its own message came through above) or took longer than `bound`.
    async fn ready(&mut self, bound: Duration) -> Result<()> {
        tokio::select! {
            r = &mut self.ready => {
                if r.is_ok() {
                    return Ok(());
                }
                // Its output ended without the line: the process is ending.
                let code = self.exit_code().await?;
                Err(remote_error(&self.node, "start", code))
            }
            st = self.child.wait() => {
                let _ = (&mut self.out_task).await;
                let _ = (&mut self.err_task).await;
                let code = exit_code(&self.node, st)?;
                Err(remote_error(&self.node, "start", code))
            }
            _ = tokio::time::sleep(bound) => Err(FerryError::Unreachable(format!(
                "{} did not get ready to start within {} s",
                self.node,
                bound.as_secs()
            ))),
        }
    }

    /// Tell it to start; its exit code once it is done.
    pub async fn go(mut self) -> Result<i32> {
        let node = self.node.clone();
        let Some(mut pipe) = self.stdin.take() else {
            return Err(FerryError::Failed(format!(
                "{node}: no input to send the go to"
            )));
        };
        pipe.write_all(format!("{GO}\n").as_bytes())
            .await
            .map_err(|e| FerryError::Unreachable(format!("{node}: cannot send the go: {e}")))?;
        // Keep the pipe open: its end would read as "called off".
        let code = self.wait().await;
        drop(pipe);
        code
    }

    /// Call the start off (end of its input), and wait until it ended.
    pub async fn call_off(mut self) {
        self.stdin.take();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
    }

    async fn exit_code(&mut self) -> Result<i32> {
        let st = self.child.wait().await;
        exit_code(&self.node, st)
    }

    async fn wait(mut self) -> Result<i32> {
        let code = self.exit_code().await;
        let _ = self.out_task.await;
        let _ = self.err_task.await;
        code
    }
}

fn exit_code(node: &str, st: std::io::Result<std::process::ExitStatus>) -> Result<i32> {
    let status = st.map_err(|e| FerryError::Failed(format!("ssh {node}: {e}")))?;
    match status.code() {
        Some(255) => Err(FerryError::Unreachable(format!(
            "{node} did not answer (ssh exit 255)"
        ))),
        Some(c) => Ok(c),
        None => Err(FerryError::Failed(format!("ssh {node} was killed"))),
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
