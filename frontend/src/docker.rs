//! `ferry docker SVC -- ARGS…`: the helper runs docker against the service's
//! daemon with our own stdin/stdout/stderr, passed as file descriptors. For
//! a `type = podman` container the helper runs podman on the service's
//! storage instead: same call, same allow-list.

use std::os::fd::AsFd;

use crate::client::Helper;
use crate::error::{FerryError, Result};

fn dup(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<zbus::OwnedFd> {
    fd.try_clone_to_owned()
        .map(zbus::OwnedFd::from)
        .map_err(|e| FerryError::Failed(format!("cannot pass {what}: {e}")))
}

pub async fn run(h: &Helper, svc: &str, rid: Option<&str>, args: Vec<String>) -> Result<i32> {
    let cfg = h.config(svc).await?;
    let rid = match rid {
        Some(r) => r.to_string(),
        None => Helper::first_container(&cfg)?,
    };
    let c = h.container(svc, &rid).await?;
    let stdin = dup(std::io::stdin().as_fd(), "stdin")?;
    let stdout = dup(std::io::stdout().as_fd(), "stdout")?;
    let stderr = dup(std::io::stderr().as_fd(), "stderr")?;
    Ok(c.docker(args, stdin, stdout, stderr).await?)
}
