//! Config sync between the service's nodes (the tutorial's `syncnodes`):
//! in sync = the same content (sha256), never timestamps. Pushes go from the
//! node that runs the service, through each peer's own helper
//! (`InstallConfig`, polkit action io.ferry.config.install).

use std::time::Duration;

use ferry_core::config::{in_schedule, ServiceConfig};
use ferry_core::status::{ResourceStatus, State};
use futures_util::future::join_all;

use crate::client::Helper;
use crate::error::{FerryError, Result};
use crate::log::Log;
use crate::remote::Peers;

const LABEL: &str = "sync svc config to nodes";

fn sync_rid(cfg: &ServiceConfig) -> String {
    cfg.sync
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "sync#i0".into())
}

fn peers_of<'a>(cfg: &'a ServiceConfig, here: &'a str) -> impl Iterator<Item = &'a String> {
    cfg.nodes.iter().filter(move |n| n.as_str() != here)
}

/// Where each peer stands: `Ok(true)` same config, `Ok(false)` needs an
/// update, `Err` did not answer.
async fn peer_states(
    peers: &Peers,
    cfg: &ServiceConfig,
    here: &str,
) -> Vec<(String, Result<bool>)> {
    let sum = cfg.checksum();
    let checks = peers_of(cfg, here).map(|p| {
        let sum = sum.clone();
        async move {
            let r = match peers.status(p, &cfg.name).await {
                Ok(st) => Ok(st.checksum == sum),
                // No (valid) config there: it needs one.
                Err(FerryError::Usage(_)) => Ok(false),
                Err(e) => Err(e),
            };
            (p.clone(), r)
        }
    });
    join_all(checks).await
}

/// The `sync` branch of the status tree: n/a on a single node.
pub async fn status(cfg: &ServiceConfig, here: &str) -> Result<Vec<ResourceStatus>> {
    if peers_of(cfg, here).next().is_none() {
        return Ok(Vec::new());
    }
    let peers = Peers::new()?;
    let mut comments = Vec::new();
    let (mut stale, mut silent) = (false, false);
    for (node, r) in peer_states(&peers, cfg, here).await {
        match r {
            Ok(true) => {}
            Ok(false) => {
                stale = true;
                comments.push(format!("{node} need update"));
            }
            Err(e) => {
                silent = true;
                comments.push(format!("{node} did not answer: {e}"));
            }
        }
    }
    // A peer that did not answer may or may not be in sync: warn, whatever
    // order the answers came in.
    let state = match (stale, silent) {
        (_, true) => State::Warn,
        (true, false) => State::Down,
        (false, false) => State::Up,
    };
    let mut rs = ResourceStatus::new(&sync_rid(cfg), state, LABEL);
    rs.comments = comments;
    Ok(vec![rs])
}

fn minutes_now() -> u16 {
    // SAFETY: localtime_r writes into the tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        (tm.tm_hour * 60 + tm.tm_min) as u16
    }
}

fn period_text(text: &str) -> String {
    let parts: Vec<String> = text
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .flat_map(|w| w.split('-').map(|t| format!("'{t}'")).collect::<Vec<_>>())
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Push the config to every peer that does not run the same one.
pub async fn push(
    h: &Helper,
    cfg: &ServiceConfig,
    here: &str,
    force: bool,
    log: &Log,
) -> Result<()> {
    let rid = sync_rid(cfg);
    if let Some(s) = cfg.sync.get(&rid) {
        if !force && !in_schedule(&s.schedule, minutes_now()) {
            log.info(
                Some(&rid),
                &format!(
                    "skip sync: not in allowed period ({})",
                    period_text(&s.schedule_text)
                ),
            );
            return Ok(());
        }
    }
    if !force {
        let st = crate::status::service_status(h, cfg, here, false).await?;
        if st.avail != State::Up {
            return Err(FerryError::Failed(format!(
                "'{}' is {} on {here}: sync pushes from the node that runs the service (--force pushes anyway)",
                cfg.name, st.avail
            )));
        }
    }
    let peers = Peers::new()?;
    let mut failed = Vec::new();
    for (node, r) in peer_states(&peers, cfg, here).await {
        match r {
            Ok(true) => log.info(None, &format!("{node} already runs this config")),
            Ok(false) => {
                log.info(
                    None,
                    &format!("exec 'ferry receive-config {}' on node {node}", cfg.name),
                );
                let out = peers
                    .output(
                        &node,
                        false,
                        &["receive-config", &cfg.name],
                        Some(&cfg.text),
                        Duration::from_secs(30),
                    )
                    .await;
                match out {
                    Ok(o) if o.status.success() => log.info(
                        None,
                        &format!("{node}: {}", String::from_utf8_lossy(&o.stdout).trim()),
                    ),
                    Ok(o) => {
                        let msg = String::from_utf8_lossy(&o.stderr).trim().to_string();
                        log.error(None, &format!("{node}: {msg}"));
                        failed.push(format!("{node}: {msg}"));
                    }
                    Err(e) => {
                        log.error(None, &format!("{node}: {e}"));
                        failed.push(format!("{node}: {e}"));
                    }
                }
            }
            Err(e) => {
                log.error(None, &format!("{node}: {e}"));
                failed.push(format!("{node}: {e}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(FerryError::Failed(format!(
            "sync failed for {}",
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn period_like_the_tutorial() {
        assert_eq!(super::period_text("03:59-05:59"), "['03:59', '05:59']");
    }
}
