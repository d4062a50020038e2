//! `ferry relocate SVC --to NODE`: stop here, check it is down here, start
//! there; if the start there fails, stop there and start here again.

use std::time::{Duration, Instant};

use ferry_core::config::{RemoteMode, ServiceConfig};
use ferry_core::status::{State, CONFIG_RID};

use crate::action;
use crate::client::Helper;
use crate::error::{FerryError, Result};
use crate::log::Log;
use crate::remote::{remote_error, Peers, FERRY_PATH};

/// Start or stop the service on this node: in-process through the helper
/// (polkit decides; this process holds the service lock through the same
/// connection), or through `sudo -n ferry` in sudo mode, where that root
/// process takes the lock itself for its one step, waiting up to `wait_ms`.
pub async fn local(
    h: &Helper,
    peers: &Peers,
    cfg: &ServiceConfig,
    here: &str,
    verb: &str,
    wait_ms: u32,
    log: &Log,
) -> Result<()> {
    if peers.mode(here) == RemoteMode::Sudo {
        let wait_secs = (wait_ms / 1000).to_string();
        let status = tokio::process::Command::new("sudo")
            .args(["-n", FERRY_PATH, verb, &cfg.name, "--waitlock", &wait_secs])
            .status()
            .await
            .map_err(|e| FerryError::Failed(format!("cannot run sudo: {e}")))?;
        return match status.code() {
            Some(0) => Ok(()),
            Some(c) => Err(remote_error(here, verb, c)),
            None => Err(FerryError::Failed(format!("sudo ferry {verb} was killed"))),
        };
    }
    match verb {
        "start" => action::start(h, cfg, here, &[], log).await,
        _ => action::stop(h, cfg, &[], log).await,
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

pub async fn relocate(
    h: &Helper,
    cfg: &ServiceConfig,
    here: &str,
    to: &str,
    wait_ms: u32,
    log: &Log,
) -> Result<()> {
    if !cfg.nodes.iter().any(|n| n == to) {
        return Err(FerryError::Usage(format!(
            "{to} is not one of the nodes of '{}' ({})",
            cfg.name,
            cfg.nodes.join(" ")
        )));
    }
    if to == here {
        return Err(FerryError::Usage(format!("this node is {to} already")));
    }
    // A service the helper runs with its last good config (its file here
    // went bad) would not come back on its feet here if the move failed,
    // and the target may run a different file: fix the file first.
    if let Some(kept) = h
        .service(&cfg.name)
        .await?
        .status()
        .await?
        .iter()
        .find(|s| s.rid == CONFIG_RID)
    {
        return Err(FerryError::Failed(format!(
            "'{}' runs on {here} with its last good config: {}; refusing to relocate it",
            cfg.name,
            kept.comments.join("; ")
        )));
    }
    let peers = Peers::new()?;

    // The service lock on this node, held by this process's connection for
    // the whole relocation, so nobody acts here between our stop and our
    // fallback start. In sudo mode this unprivileged process cannot take it
    // (taking it needs the polkit action io.ferry.service.lock, which sudo
    // users are not granted): each `sudo ferry stop|start` step takes it for
    // itself, and between the steps the service is unlocked here.
    if peers.mode(here) != RemoteMode::Sudo {
        crate::lock::acquire(h, &cfg.name, here, wait_ms).await?;
    }

    // The target must answer, run the same config, and not run the service.
    let t_check = Instant::now();
    let target = peers.status(to, &cfg.name).await.map_err(|e| match e {
        FerryError::Usage(m) => FerryError::Failed(format!(
            "{to} has no valid config for '{}' ({m}): run `ferry sync {} --force` first",
            cfg.name, cfg.name
        )),
        other => other,
    })?;
    if target.checksum != cfg.checksum() {
        return Err(FerryError::Failed(format!(
            "{to} runs another config of '{}': run `ferry sync {}` first",
            cfg.name, cfg.name
        )));
    }
    if target.avail != State::Down {
        return Err(FerryError::Failed(format!(
            "'{}' is {} on {to}, not down: refusing to relocate onto it",
            cfg.name, target.avail
        )));
    }
    log.info(
        None,
        &format!(
            "{to} answers, same config, service down there ({} ms)",
            ms(t_check.elapsed())
        ),
    );
    // The start there, connected and holding the lock there before anything
    // stops here: its ssh session and process start are not downtime.
    let t_ready = Instant::now();
    let target = peers.start_on_go(to, &cfg.name).await?;
    log.info(
        None,
        &format!(
            "{to} is ready to start it: connected, locked ({} ms)",
            ms(t_ready.elapsed())
        ),
    );

    let t0 = Instant::now();
    log.info(None, &format!("stop on {here}"));
    if let Err(e) = local(h, &peers, cfg, here, "stop", wait_ms, log).await {
        target.call_off().await;
        log.error(
            None,
            &format!("stop on {here} failed: {e}; starting it here again"),
        );
        local(h, &peers, cfg, here, "start", wait_ms, log)
            .await
            .ok();
        return Err(e);
    }
    let t_stop = t0.elapsed();

    let t1 = Instant::now();
    let st = match crate::status::service_status(h, cfg, here, false).await {
        Ok(st) => st,
        Err(e) => {
            target.call_off().await;
            return Err(e);
        }
    };
    if st.avail != State::Down {
        target.call_off().await;
        log.error(
            None,
            &format!(
                "'{}' is {} on {here} after stop; starting it here again",
                cfg.name, st.avail
            ),
        );
        local(h, &peers, cfg, here, "start", wait_ms, log)
            .await
            .ok();
        return Err(FerryError::Failed(format!(
            "'{}' did not go down on {here}",
            cfg.name
        )));
    }
    let t_down = t1.elapsed();
    log.info(None, &format!("down on {here} ({} ms)", ms(t_down)));

    let t2 = Instant::now();
    log.info(None, &format!("start on {to}"));
    let started = target.go().await;
    let t_start = t2.elapsed();
    if let Err(e) = started.and_then(|code| {
        if code == 0 {
            Ok(())
        } else {
            Err(remote_error(to, "start", code))
        }
    }) {
        log.error(
            None,
            &format!("start on {to} failed: {e}; stopping there and starting here again"),
        );
        // Start here again only once the target says it stopped: if it cannot
        // be reached, it may hold the address and the disk, and two nodes
        // running the service is worse than none.
        let stopped_there = match peers.stream(to, true, &["stop", &cfg.name]).await {
            Ok(0) => Ok(()),
            Ok(c) => Err(format!("exit {c}")),
            Err(e2) => Err(e2.to_string()),
        };
        if let Err(why) = stopped_there {
            log.error(
                None,
                &format!(
                    "stop on {to} failed ({why}): leaving '{}' down on {here}",
                    cfg.name
                ),
            );
            return Err(FerryError::Failed(format!(
                "relocation of '{}' to {to} failed ({e}) and {to} could not be stopped ({why}): \
                 the service is down on {here} and in an unknown state on {to}; check {to}, \
                 then start it where it belongs",
                cfg.name
            )));
        }
        return match local(h, &peers, cfg, here, "start", wait_ms, log).await {
            Ok(()) => Err(FerryError::Failed(format!(
                "relocation of '{}' to {to} failed ({e}); it runs on {here} again",
                cfg.name
            ))),
            Err(e3) => Err(FerryError::Failed(format!(
                "relocation of '{}' to {to} failed ({e}), and starting it again on {here} failed too ({e3})",
                cfg.name
            ))),
        };
    }
    let downtime = t0.elapsed();
    log.info(
        None,
        &format!(
            "relocated to {to}: stop {} ms, check down {} ms, start {} ms; downtime {} ms",
            ms(t_stop),
            ms(t_down),
            ms(t_start),
            ms(downtime)
        ),
    );
    Ok(())
}
