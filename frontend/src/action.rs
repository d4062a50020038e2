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
    let steps = plan(cfg, &selected, &was_up);
    let parallel = steps.iter().any(|s| matches!(s, Step::Claim(_)));
    let mut touched: Vec<&Resource> = Vec::new();
    let mut timeline: Vec<(String, u128, u128)> = Vec::new();
    for step in &steps {
        let r = step.resource();
        if crate::log::interrupted() {
            log.warn(None, "interrupted: rolling back what this start did");
            rollback(h, cfg, touched, &was_up, log, daemon_was_up).await;
            return Err(FerryError::Failed(format!(
                "start of '{}' interrupted and rolled back",
                cfg.name
            )));
        }
        let began = t0.elapsed().as_millis();
        match run_step(h, cfg, step, log).await {
            Ok(probe) => {
                if !touched.iter().any(|t| t.rid == r.rid) {
                    touched.push(r);
                }
                let ended = t0.elapsed().as_millis();
                // The helper measured "ago" as the add call began.
                if let Some((ran, ago)) = probe {
                    let end = began.saturating_sub(ago);
                    timeline.push(("probe".into(), end.saturating_sub(ran), end));
                }
                timeline.push((step.name(), began, ended));
            }
            Err(e) => {
                log.error(Some(&r.rid), &format!("start failed: {e}"));
                // A refused call did nothing; any other failure may have
                // done part of the resource's start.
                if !matches!(e, FerryError::NotAuthorized(_))
                    && !touched.iter().any(|t| t.rid == r.rid)
                {
                    touched.push(r);
                }
                rollback(h, cfg, touched, &was_up, log, daemon_was_up).await;
                return Err(e);
            }
        }
    }
    if parallel {
        let spans: Vec<String> = timeline
            .iter()
            .map(|(name, a, b)| format!("{name} {a}-{b}"))
            .collect();
        log.info(None, &format!("timeline (ms): {}", spans.join(", ")));
    }
    log.info(
        None,
        &format!("start done in {} ms", t0.elapsed().as_millis()),
    );
    Ok(())
}

/// One step of a start.
enum Step<'a> {
    /// The resource's whole start (today's order).
    Whole(&'a Resource),
    /// Take the lease first; the helper then probes the addresses (rule 2
    /// of helper/src/guard.rs).
    Claim(&'a Resource),
    /// Only the private containerd of a container resource, right after the
    /// claim: it boots while the storage comes up.
    Prepare(&'a Resource),
    /// Only the private docker daemon of a container resource.
    Daemon(&'a Resource),
    /// Only the container (its daemon is up).
    Container(&'a Resource),
}

impl<'a> Step<'a> {
    fn resource(&self) -> &'a Resource {
        match self {
            Step::Whole(r)
            | Step::Claim(r)
            | Step::Prepare(r)
            | Step::Daemon(r)
            | Step::Container(r) => r,
        }
    }

    fn name(&self) -> String {
        match self {
            Step::Whole(r) => r.rid.clone(),
            Step::Claim(r) => format!("{} (claim)", r.rid),
            Step::Prepare(r) => format!("{} (containerd)", r.rid),
            Step::Daemon(r) => format!("{} (daemon)", r.rid),
            Step::Container(r) => r.rid.clone(),
        }
    }
}

/// The order of a start. A service with a lease, started whole (its lease
/// and every address selected, the lease not up yet), takes the lease
/// first, has the private containerd boot and brings up the storage and
/// then dockerd while the helper probes the address, then adds the address
/// and starts the containers; any other start goes in the config's order,
/// address first.
fn plan<'a>(
    cfg: &ServiceConfig,
    selected: &[&'a Resource],
    was_up: &dyn Fn(&str) -> bool,
) -> Vec<Step<'a>> {
    let has = |r: &Resource| selected.iter().any(|s| s.rid == r.rid);
    let lease = selected.iter().find(|r| r.kind() == Kind::Lease);
    let whole = cfg
        .resources
        .iter()
        .filter(|r| r.kind() == Kind::Ip)
        .all(has);
    let Some(lease) = lease.filter(|l| whole && !was_up(&l.rid)) else {
        return selected.iter().map(|r| Step::Whole(r)).collect();
    };
    let mut steps = vec![Step::Claim(lease)];
    let of = |k: Kind| selected.iter().filter(move |r| r.kind() == k);
    let daemon = of(Kind::Container)
        .find(|r| crate::resource::container::has_daemon(cfg, &r.rid))
        .copied();
    steps.extend(daemon.map(Step::Prepare));
    steps.extend(
        selected
            .iter()
            .filter(|r| matches!(r.kind(), Kind::Vg | Kind::Fs))
            .map(|r| Step::Whole(r)),
    );
    steps.extend(daemon.map(Step::Daemon));
    steps.extend(of(Kind::Ip).map(|r| Step::Whole(r)));
    steps.extend(of(Kind::Container).map(|r| Step::Container(r)));
    steps
}

/// Run one step; a claimed address's add reports its probe's run time and
/// how long before the add it ended (for the timeline).
async fn run_step(
    h: &Helper,
    cfg: &ServiceConfig,
    step: &Step<'_>,
    log: &Log,
) -> Result<Option<(u128, u128)>> {
    match step {
        Step::Whole(r) if r.kind() == Kind::Ip => {
            let ip = h.ip(&cfg.name, &r.rid).await?;
            let lines = log.call(&r.rid, ip.add()).await?;
            log.call(&r.rid, ip.announce()).await?;
            Ok(lines.iter().find_map(|l| probe_span(l)))
        }
        Step::Whole(r) => resource::start(h, cfg, r, log).await.map(|()| None),
        Step::Claim(r) => {
            let lease = h.lease(&cfg.name, &r.rid).await?;
            log.call(&r.rid, lease.claim()).await?;
            Ok(None)
        }
        Step::Prepare(r) | Step::Daemon(r) | Step::Container(r) => {
            let c = h.container(&cfg.name, &r.rid).await?;
            match step {
                Step::Prepare(_) => log.call(&r.rid, c.prepare_daemon()).await?,
                Step::Daemon(_) => log.call(&r.rid, c.start_daemon()).await?,
                _ => log.call(&r.rid, c.start()).await?,
            };
            Ok(None)
        }
    }
}

/// "(probe ran N ms, ended M ms ago; …)" out of the helper's add line.
fn probe_span(line: &str) -> Option<(u128, u128)> {
    let rest = line.split("probe ran ").nth(1)?;
    let ran = rest.split(' ').next()?.parse().ok()?;
    let rest = rest.split("ended ").nth(1)?;
    let ago = rest.split(' ').next()?.parse().ok()?;
    Some((ran, ago))
}

/// Stop what this start did, in the guards' order (the config's, reversed),
/// keeping what was up before it.
async fn rollback(
    h: &Helper,
    cfg: &ServiceConfig,
    touched: Vec<&Resource>,
    was_up: &dyn Fn(&str) -> bool,
    log: &Log,
    daemon_was_up: bool,
) {
    let mut undo: Vec<&Resource> = touched.into_iter().filter(|r| !was_up(&r.rid)).collect();
    if undo.is_empty() {
        return;
    }
    let index = |r: &Resource| cfg.resources.iter().position(|c| c.rid == r.rid);
    undo.sort_by_key(|r| index(r));
    log.warn(None, "rolling back what this start did");
    stop_list(h, cfg, &undo, log, Some(daemon_was_up))
        .await
        .ok();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServiceConfig {
        let text = include_str!("../../tests/configs/good-lease/busybox.conf");
        ferry_core::config::parse_service("busybox.conf", text).expect("the lab's config parses")
    }

    fn names(steps: &[Step<'_>]) -> Vec<String> {
        steps.iter().map(Step::name).collect()
    }

    #[test]
    fn a_whole_start_with_a_lease_claims_first_and_adds_the_address_last() {
        let cfg = cfg();
        let all = select(&cfg, &[]).expect("all resources");
        let steps = plan(&cfg, &all, &|_| false);
        assert_eq!(
            names(&steps),
            [
                "lease#1 (claim)",
                "container#1 (containerd)",
                "vg#1",
                "fs#1",
                "container#1 (daemon)",
                "ip#1",
                "container#1"
            ]
        );
    }

    #[test]
    fn a_subset_or_a_held_lease_keeps_the_config_order() {
        let cfg = cfg();
        let rids = ["lease#1".to_string(), "vg#1".to_string()];
        let some = select(&cfg, &rids).expect("subset");
        assert_eq!(names(&plan(&cfg, &some, &|_| false)), ["lease#1", "vg#1"]);
        let all = select(&cfg, &[]).expect("all resources");
        let held = plan(&cfg, &all, &|rid| rid == "lease#1");
        assert!(held.iter().all(|s| matches!(s, Step::Whole(_))));
        assert_eq!(held[0].name(), "ip#1");
    }

    #[test]
    fn the_probe_span_is_read_from_the_add_line() {
        let line = "checking 203.0.113.25 availability: free, the claim's probe saw no answer \
                    in 200 ms (probe ran 201 ms, ended 305 ms ago; waited 0 ms for it)";
        assert_eq!(probe_span(line), Some((201, 305)));
        assert_eq!(probe_span("ip addr add 203.0.113.25/24 dev lab0"), None);
    }
}
