//! One lock per service per node, so two actions on a service never
//! interleave. A flock on /run/ferry/locks/<svc>.lock (the helper creates
//! the directory, sticky and world-writable like /run/lock): it goes away
//! with the process that holds it, even after a kill -9.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{FerryError, Result};

pub const LOCK_DIR: &str = "/run/ferry/locks";

pub struct ServiceLock {
    _lock: Flock<File>,
}

pub async fn acquire(service: &str, node: &str, wait: Duration) -> Result<ServiceLock> {
    let path = std::path::Path::new(LOCK_DIR).join(format!("{service}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(0o666)
        .open(&path)
        .or_else(|_| File::open(&path))
        .map_err(|e| {
            FerryError::Failed(format!(
                "cannot open the lock {}: {e} (the helper creates {LOCK_DIR}: is it running?)",
                path.display()
            ))
        })?;
    let deadline = Instant::now() + wait;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(ServiceLock { _lock: lock }),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    return Err(FerryError::Failed(format!(
                        "another ferry action holds the lock of service '{service}' on {node} \
                         (waited {} s; --waitlock SECONDS waits longer)",
                        wait.as_secs()
                    )));
                }
                file = f;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((_, e)) => {
                return Err(FerryError::Failed(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )))
            }
        }
    }
}
