//! `ferry start` and `ferry stop` on this node: the helper calls of each
//! resource, in the config's order, logged as they go; a failed start rolls
//! back what it did, in reverse.

use std::time::Instant;

use ferry_core::config::{Kind, Resource, ServiceConfig};
use ferry_core::status::State;

use crate::client::Helper;
use crate::error::{FerryError, Result};
use crate::log::Log;
use crate::resource;

/// The resources named by `--rid` (all when none), in start order.
pub fn select<'a>(cfg: &'a ServiceConfig, rids: &[String]) -> Result<Vec<&'a Resource>> {
    for rid in rids {
        if cfg.resource(rid).is_none() {
            let known: Vec<&str> = cfg.resources.iter().map(|r| r.rid.as_str()).collect();
            return Err(FerryError::Usage(format!(
                "service '{}' has no resource {rid} (resources: {})",
                cfg.name,
                known.join(", ")
            )));
        }
    }
    Ok(cfg
        .resources
        .iter()
        .filter(|r| rids.is_empty() || rids.contains(&r.rid))
        .collect())
}

/// `node`: this node's name, as its helper knows it.
pub async fn start(
    h: &Helper,
    cfg: &ServiceConfig,
    node: &str,
    rids: &[String],
    log: &Log,
) -> Result<()> {
    let selected = select(cfg, rids)?;
    if !cfg.nodes.iter().any(|n| n == node) {
        return Err(FerryError::Usage(format!(
            "{node} is not one of the nodes of '{}' ({}): refusing to start it here",
            cfg.name,
            cfg.nodes.join(" ")
        )));
    }
    let before = h.service(&cfg.name).await?.status().await?;
    let was_up = |rid: &str| {
        before
            .iter()
            .any(|s| s.rid == rid && s.state() == State::Up)
    };
    // The address probe is the guard against running the service twice: a
    // partial start that skips it may only go ahead once the address is up
    // here, i.e. once this node has won the probe.
    let skipped_ips: Vec<&str> = cfg
        .resources
        .iter()
        .filter(|r| {
            r.kind() == Kind::Ip && !selected.iter().any(|s| s.rid == r.rid) && !was_up(&r.rid)
        })
        .map(|r| r.rid.as_str())
        .collect();
    if !skipped_ips.is_empty() && selected.iter().any(|r| r.kind() != Kind::Ip) {
        return Err(FerryError::Usage(format!(
            "{} is not up here and guards against running '{}' on two nodes: include it in --rid, \
             or start it first",
            skipped_ips.join(", "),
            cfg.name
        )));
    }
    // A private daemon that ran before this start (started on demand by
    // `ferry docker`, or by an earlier partial start) is not this start's to
    // stop: a rollback keeps it.
    let daemon_was_up = before.iter().any(|s| {
        cfg.resource(&s.rid)
            .is_some_and(|r| r.kind() == Kind::Container)
            && !s
                .comments
                .iter()
                .any(|c| c == ferry_core::status::DAEMON_NOT_RUNNING)
    });
    let t0 = Instant::now();
    let mut touched: Vec<&Resource> = Vec::new();
    for r in &selected {
        if crate::log::interrupted() {
            log.warn(None, "interrupted: rolling back what this start did");
            let undo: Vec<&Resource> = touched.into_iter().filter(|r| !was_up(&r.rid)).collect();
            stop_list(h, cfg, &undo, log, Some(daemon_was_up))
                .await
                .ok();
            return Err(FerryError::Failed(format!(
                "start of '{}' interrupted and rolled back",
                cfg.name
            )));
        }
        match resource::start(h, cfg, r, log).await {
            Ok(()) => touched.push(r),
            Err(e) => {
                log.error(Some(&r.rid), &format!("start failed: {e}"));
                // A refused call did nothing; any other failure may have
                // done part of the resource's start.
                if !matches!(e, FerryError::NotAuthorized(_)) {
                    touched.push(r);
                }
                let undo: Vec<&Resource> =
                    touched.into_iter().filter(|r| !was_up(&r.rid)).collect();
                if !undo.is_empty() {
                    log.warn(None, "rolling back what this start did");
                    stop_list(h, cfg, &undo, log, Some(daemon_was_up))
                        .await
                        .ok();
                }
                return Err(e);
            }
        }
    }
    log.info(
        None,
        &format!("start done in {} ms", t0.elapsed().as_millis()),
    );
    Ok(())
}

pub async fn stop(h: &Helper, cfg: &ServiceConfig, rids: &[String], log: &Log) -> Result<()> {
    let selected = select(cfg, rids)?;
    let t0 = Instant::now();
    stop_list(h, cfg, &selected, log, None).await?;
    log.info(
        None,
        &format!("stop done in {} ms", t0.elapsed().as_millis()),
    );
    Ok(())
}

/// Stop `list` (given in start order) in reverse. A rollback
/// (`rollback = Some(daemon_was_up)`) logs a failure and still stops the
/// rest, and keeps a daemon that ran before the start; a stop (`None`) ends
/// at the first failure, leaving what sits below it up.
async fn stop_list(
    h: &Helper,
    cfg: &ServiceConfig,
    list: &[&Resource],
    log: &Log,
    rollback: Option<bool>,
) -> Result<()> {
    let keep_going = rollback.is_some();
    let keep_daemon = rollback == Some(true);
    let all_containers: Vec<&str> = cfg
        .resources
        .iter()
        .filter(|r| r.kind() == Kind::Container)
        .map(|r| r.rid.as_str())
        .collect();
    let selected_containers = list.iter().filter(|r| r.kind() == Kind::Container).count();
    let whole = all_containers.len() == selected_containers;
    let mut containers_left = selected_containers;
    let mut first_err = None;
    for r in list.iter().rev() {
        // A rollback stops the daemon with its last container (it refuses
        // while any other still runs); a partial stop keeps it for the others.
        let last_container = if r.kind() == Kind::Container {
            containers_left -= 1;
            containers_left == 0 && (whole || keep_going) && !keep_daemon
        } else {
            false
        };
        if let Err(e) = resource::stop(h, cfg, r, last_container, log).await {
            log.error(Some(&r.rid), &format!("stop failed: {e}"));
            if !keep_going {
                return Err(e);
            }
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
