//! The order of a service's resources, enforced by the helper whoever calls
//! (`ferry`, a `--rid` subset, `busctl`): "may this resource change state
//! now?". Every resource method runs [`check`] first, inside the service's
//! lock, so the answer still holds when the action runs.
//!
//! The rules, in full:
//! 0. The address is added only where no other node holds the lease: a
//!    start that would be refused at the lease fails before it touches
//!    anything. A holder whose host lease is free on disk holds nothing;
//!    nor does one the cluster fenced after its last renewal, whose lease
//!    the acquire then takes over (takeover.rs).
//! 1. Nothing on shared storage (VG tag, activation or reservation, mount,
//!    the private docker daemon) is taken unless the lease, when the
//!    service has one, is held here, **and** every address of the service
//!    is up here or, with a lease, is being probed by the claim that took
//!    the lease and was not found in use (rule 2). A container starts only
//!    once every address is up. The lease keeps other nodes off the disks;
//!    the probe keeps the service off an address another host uses.
//! 2. The lease is taken once the address is up here (`Acquire`), or first,
//!    by `Claim`, which then starts the address probe in the background;
//!    `Ip.Add` adds the address only once that probe passed.
//! 3. A filesystem is mounted only where the service's VGs carry this
//!    node's tag.
//! 4. A VG is let go (untag, deactivate, release) only when no filesystem
//!    of the service is live on this node (kernel-level: any superblock, in
//!    any mount namespace).
//! 5. The lease is released only when nothing of the service on shared
//!    storage is left here: no live filesystem, no VG of ours, no daemon.
//! 6. The address is removed only after all that, and after the lease.
//!    With a lease, its release saw the VGs and the daemon let go, and they
//!    come back only under the lease: only a live filesystem is checked.
//!
//! Stopping a filesystem, a daemon or a container needs nothing: letting go
//! is always allowed. `Lease.Init` is checked by the lease itself (it
//! refuses an area that already holds the lease).

use ferry_core::config::{ResourceConfig, ServiceConfig};
use ferry_core::status::State;

use crate::ctx::ResCtx;
use crate::error::{HelperError, Result};
use crate::ip::Probe;

/// The guard key of `Lease.Claim` (polkit-wise it is `io.ferry.lease.acquire`).
pub const CLAIM: &str = "io.ferry.lease.claim";

/// What an action does to the service's hold on its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Adds the address (rule 0).
    TakeAddress,
    /// Touches shared storage (rule 1, and 3 for a mount).
    TakeShared,
    /// Starts a container (rule 1: the address itself up).
    StartContainer,
    /// Takes the lease once the address is up (rule 2).
    TakeLease,
    /// Takes the lease first and starts the address probe (rule 2).
    ClaimLease,
    /// Lets go of a VG (rule 4).
    LetGoVg,
    /// Releases the lease (rule 5).
    LetGoLease,
    /// Removes the address (rule 6).
    LetGoAddress,
    /// Needs nothing.
    Free,
}

fn change_of(action: &str) -> Change {
    match action {
        "io.ferry.vg.tag"
        | "io.ferry.vg.activate"
        | "io.ferry.vg.reserve"
        | "io.ferry.vg.preempt"
        | "io.ferry.fs.mount"
        | "io.ferry.container.start-daemon" => Change::TakeShared,
        "io.ferry.container.start" => Change::StartContainer,
        "io.ferry.lease.acquire" => Change::TakeLease,
        CLAIM => Change::ClaimLease,
        "io.ferry.ip.add" => Change::TakeAddress,
        "io.ferry.vg.untag" | "io.ferry.vg.deactivate" | "io.ferry.vg.release" => Change::LetGoVg,
        "io.ferry.lease.release" => Change::LetGoLease,
        "io.ferry.ip.remove" => Change::LetGoAddress,
        _ => Change::Free,
    }
}

fn refuse(ctx: &ResCtx, verb: &str, why: String) -> HelperError {
    HelperError::OutOfOrder(format!(
        "{}: refusing to {verb} on {} for service '{}': {why}",
        ctx.rid,
        ctx.reg.node(),
        ctx.service
    ))
}

/// May the resource of `ctx` do `action` now? `Err(OutOfOrder)` says which
/// other resource stands in the way.
pub async fn check(ctx: &ResCtx, action: &str) -> Result<()> {
    let change = change_of(action);
    if change == Change::Free {
        return Ok(());
    }
    let svc = ctx.service_config()?;
    let verb = action.rsplit('.').next().unwrap_or(action);
    match change {
        Change::TakeAddress => {
            // Held here, it is held nowhere else: no lease I/O.
            if matches!(crate::lease::held_here(&svc).await?, Some((_, true))) {
                return Ok(());
            }
            if let Some(held) = crate::lease::held_elsewhere(&ctx.reg, &svc).await? {
                if crate::takeover::holder_holds_nothing(&ctx.reg, &svc).await {
                    return Ok(());
                }
                return Err(HelperError::LeaseHeld(format!(
                    "{}: refusing to add the address on {} for service '{}': {held}",
                    ctx.rid,
                    ctx.reg.node(),
                    ctx.service
                )));
            }
        }
        Change::TakeShared => {
            addresses_up(ctx, &svc, verb, true).await?;
            lease_held(ctx, &svc, verb).await?;
            if action == "io.ferry.fs.mount" {
                volume_groups_tagged(ctx, &svc, verb).await?;
            }
        }
        Change::StartContainer => {
            addresses_up(ctx, &svc, verb, false).await?;
            lease_held(ctx, &svc, verb).await?;
        }
        Change::TakeLease => addresses_up(ctx, &svc, verb, false).await?,
        // The acquire itself refuses a lease held elsewhere (rule 0).
        Change::ClaimLease => {}
        Change::LetGoVg => no_live_filesystem(ctx, &svc, verb)?,
        Change::LetGoLease => {
            no_live_filesystem(ctx, &svc, verb)?;
            no_daemon(ctx, &svc, verb)?;
            no_volume_group_here(ctx, &svc, verb).await?;
        }
        Change::LetGoAddress => {
            no_live_filesystem(ctx, &svc, verb)?;
            match crate::lease::held_here(&svc).await? {
                Some((rid, true)) => {
                    return Err(refuse(
                        ctx,
                        verb,
                        format!("the lease ({rid}) is still held here: release it first"),
                    ))
                }
                Some((_, false)) => {}
                None => {
                    no_daemon(ctx, &svc, verb)?;
                    no_volume_group_here(ctx, &svc, verb).await?;
                }
            }
        }
        Change::Free => {}
    }
    Ok(())
}

/// Every address up here; with `claimed`, an address whose claim probe
/// runs or passed counts too (rule 1).
async fn addresses_up(ctx: &ResCtx, svc: &ServiceConfig, verb: &str, claimed: bool) -> Result<()> {
    for r in &svc.resources {
        let ResourceConfig::Ip(c) = &r.config else {
            continue;
        };
        if crate::ip::status(&r.rid, c).await.state() == State::Up {
            continue;
        }
        match crate::ip::claim_state(&ctx.service, &r.rid).filter(|_| claimed) {
            Some(Probe::Running | Probe::Free { .. }) => continue,
            Some(Probe::InUse(why) | Probe::Failed(why)) => {
                return Err(refuse(ctx, verb, format!("{}: {why}", r.rid)))
            }
            None => {}
        }
        return Err(refuse(
            ctx,
            verb,
            format!(
                "{} ({}) is not up here; its free-address probe guards against running \
                 the service on two nodes: start {} first",
                r.rid, c.ipname, r.rid
            ),
        ));
    }
    Ok(())
}

async fn lease_held(ctx: &ResCtx, svc: &ServiceConfig, verb: &str) -> Result<()> {
    match crate::lease::held_here(svc).await? {
        Some((rid, false)) => Err(refuse(
            ctx,
            verb,
            format!("the lease ({rid}) is not held here: acquire it first"),
        )),
        _ => Ok(()),
    }
}

async fn volume_groups_tagged(ctx: &ResCtx, svc: &ServiceConfig, verb: &str) -> Result<()> {
    let node = ctx.reg.node();
    for r in &svc.resources {
        if let ResourceConfig::Vg(vg) = &r.config {
            let tags = crate::vg::tags(&vg.vgname).await?;
            if !tags.iter().any(|t| t == node) {
                let now = if tags.is_empty() {
                    "no tag".to_string()
                } else {
                    format!("tagged {}", tags.join(", "))
                };
                return Err(refuse(
                    ctx,
                    verb,
                    format!(
                        "{} is not tagged {node} ({now}): take the volume group ({}) first",
                        vg.vgname, r.rid
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn no_live_filesystem(ctx: &ResCtx, svc: &ServiceConfig, verb: &str) -> Result<()> {
    for r in &svc.resources {
        if let ResourceConfig::Fs(c) = &r.config {
            if let Some(why) = crate::fs::live_here(c) {
                return Err(refuse(
                    ctx,
                    verb,
                    format!("{} is still in use: {why}; stop {} first", r.rid, r.rid),
                ));
            }
        }
    }
    Ok(())
}

fn no_daemon(ctx: &ResCtx, svc: &ServiceConfig, verb: &str) -> Result<()> {
    if crate::container::daemon::has_processes(svc) {
        let rid = svc
            .resources
            .iter()
            .find(|r| matches!(r.config, ResourceConfig::Container(_)))
            .map(|r| r.rid.as_str())
            .unwrap_or("container");
        return Err(refuse(
            ctx,
            verb,
            format!("the service's docker daemon still runs here: stop {rid} first"),
        ));
    }
    Ok(())
}

async fn no_volume_group_here(ctx: &ResCtx, svc: &ServiceConfig, verb: &str) -> Result<()> {
    for r in &svc.resources {
        if let ResourceConfig::Vg(c) = &r.config {
            if crate::vg::held_here(ctx.reg.node(), c).await? {
                return Err(refuse(
                    ctx,
                    verb,
                    format!(
                        "{} still carries this node's tag or active volumes: stop {} first",
                        c.vgname, r.rid
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_taking_action_is_guarded() {
        for a in [
            "io.ferry.vg.tag",
            "io.ferry.vg.activate",
            "io.ferry.vg.reserve",
            "io.ferry.vg.preempt",
            "io.ferry.fs.mount",
            "io.ferry.container.start-daemon",
        ] {
            assert_eq!(change_of(a), Change::TakeShared, "{a}");
        }
        assert_eq!(
            change_of("io.ferry.container.start"),
            Change::StartContainer
        );
        assert_eq!(change_of("io.ferry.lease.acquire"), Change::TakeLease);
        assert_eq!(change_of(CLAIM), Change::ClaimLease);
        assert_eq!(change_of("io.ferry.ip.remove"), Change::LetGoAddress);
        assert_eq!(change_of("io.ferry.ip.add"), Change::TakeAddress);
        assert_eq!(change_of("io.ferry.lease.release"), Change::LetGoLease);
        for a in [
            "io.ferry.vg.untag",
            "io.ferry.vg.deactivate",
            "io.ferry.vg.release",
        ] {
            assert_eq!(change_of(a), Change::LetGoVg, "{a}");
        }
        for a in [
            "io.ferry.fs.unmount",
            "io.ferry.container.stop",
            "io.ferry.container.stop-daemon",
            "io.ferry.ip.announce",
        ] {
            assert_eq!(change_of(a), Change::Free, "{a}");
        }
    }

    /// Every action the policy file declares is classified on purpose: a new
    /// action must not slip past the guard as "free" by accident.
    #[test]
    fn every_declared_action_is_known() {
        let policy = include_str!("../../polkit/io.ferry.policy");
        let known_free = [
            "io.ferry.fs.unmount",
            "io.ferry.container.stop",
            "io.ferry.container.stop-daemon",
            "io.ferry.ip.announce",
            "io.ferry.container.docker",
            "io.ferry.config.install",
            "io.ferry.lease.init",
            "io.ferry.service.lock",
            "io.ferry.service.break-lock",
            "io.ferry.config.reload",
            // reads the in-memory audit ring (events.rs)
            "io.ferry.audit.read",
            // only implies the others
            "io.ferry.service.manage",
        ];
        for line in policy.lines() {
            let Some(rest) = line.trim().strip_prefix("<action id=\"") else {
                continue;
            };
            let id = rest.split('"').next().unwrap_or("");
            assert!(
                change_of(id) != Change::Free || known_free.contains(&id),
                "{id} is neither guarded nor known to need no guard"
            );
        }
    }
}
