//! One lock per service per node, held by this node's helper
//! (`io.ferry.Helper1.Service.Lock`) for the bus connection that took it:
//! it lasts as long as this process's connection, and a kill -9 frees it.
//! The helper refuses other callers' actions on the service while it is
//! held, so every action of ours goes through the same connection.
//!
//! (It used to be a flock in a world-writable directory, which let users
//! without rights block services and trick root into creating files.)

use std::time::Duration;

use ferry_core::dbus::errors;

use crate::client::Helper;
use crate::error::{FerryError, Result};

/// The longest `--waitlock` (the helper takes u32 milliseconds).
pub const MAX_WAIT_SECS: u64 = u32::MAX as u64 / 1000;

/// Each Lock call waits at most this long, so no bus or client timeout on a
/// long call can cut a wait short; the frontend asks again until its own
/// deadline.
const CHUNK_MS: u32 = 10_000;

/// `--waitlock SECONDS` as the helper takes it, refused when out of range.
pub fn wait_ms(secs: u64) -> Result<u32> {
    if secs > MAX_WAIT_SECS {
        return Err(FerryError::Usage(format!(
            "--waitlock {secs}: at most {MAX_WAIT_SECS} seconds"
        )));
    }
    // Checked above: at most u32::MAX.
    u32::try_from(secs * 1000)
        .map_err(|_| FerryError::Usage(format!("--waitlock {secs}: too large")))
}

/// Take the service's lock on this node, waiting up to `wait_ms`.
pub async fn acquire(h: &Helper, service: &str, node: &str, wait_ms: u32) -> Result<()> {
    let proxy = h.service(service).await?;
    let mut left = wait_ms;
    loop {
        let chunk = left.min(CHUNK_MS);
        match proxy.lock(chunk).await {
            Ok(()) => return Ok(()),
            Err(zbus::Error::MethodError(name, msg, _))
                if name.as_str() == errors::LOCKED && left > chunk =>
            {
                tracing::debug!("still locked: {}", msg.unwrap_or_default());
                left -= chunk;
            }
            Err(zbus::Error::MethodError(name, msg, _)) if name.as_str() == errors::LOCKED => {
                let waited = Duration::from_millis(u64::from(wait_ms)).as_secs();
                return Err(FerryError::Failed(format!(
                    "another ferry action holds the lock of service '{service}' on {node}: {} \
                     (waited {waited} s; --waitlock SECONDS waits longer)",
                    msg.unwrap_or_default()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long `--break-lock` waits for the holder when no `--waitlock` is
/// given.
pub const BREAK_WAIT_SECS: u64 = 10;

/// Take the service's lock, waiting up to `wait_ms` for its holder, then
/// breaking the lock of a holder that is idle (the helper never breaks one
/// in the middle of an action, and audits the break).
pub async fn acquire_breaking(h: &Helper, service: &str, node: &str, wait_ms: u32) -> Result<()> {
    let proxy = h.service(service).await?;
    match proxy.break_lock(wait_ms).await {
        Ok(()) => Ok(()),
        Err(zbus::Error::MethodError(name, msg, _)) if name.as_str() == errors::LOCKED => {
            Err(FerryError::Failed(format!(
                "the lock of service '{service}' on {node} was not broken: {}",
                msg.unwrap_or_default()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waitlock_range() {
        assert_eq!(wait_ms(0).ok(), Some(0));
        assert_eq!(wait_ms(10).ok(), Some(10_000));
        assert_eq!(wait_ms(MAX_WAIT_SECS).ok(), Some(4_294_967_000));
        assert!(matches!(
            wait_ms(MAX_WAIT_SECS + 1),
            Err(FerryError::Usage(_))
        ));
        assert!(matches!(wait_ms(u64::MAX), Err(FerryError::Usage(_))));
    }
}
