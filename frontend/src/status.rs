//! `ferry status`: the helper's resource states, merged as DESIGN §4 says,
//! shown as the seed's tree or as JSON; `--all-nodes` asks every node.

use ferry_core::config::ServiceConfig;
use ferry_core::status::ServiceStatus;

use crate::client::Helper;
use crate::error::Result;
use crate::remote::Peers;

/// `with_peers`: compare configs with the other nodes (the sync branch);
/// off when a peer asks us, so that status never recurses.
pub async fn service_status(
    h: &Helper,
    cfg: &ServiceConfig,
    node: &str,
    with_peers: bool,
) -> Result<ServiceStatus> {
    let resources = h.service(&cfg.name).await?.status().await?;
    let sync = if with_peers {
        crate::sync::status(cfg, node).await?
    } else {
        Vec::new()
    };
    Ok(ServiceStatus::new(
        &cfg.name,
        node,
        &cfg.checksum(),
        resources,
        sync,
    ))
}

/// Every node's view of the service, asked in parallel, each bounded in time.
pub async fn cluster(h: &Helper, cfg: &ServiceConfig, here: &str) -> Result<String> {
    let peers = Peers::new()?;
    let local = service_status(h, cfg, here, false).await;
    let remote = futures_util::future::join_all(
        cfg.nodes
            .iter()
            .filter(|n| n.as_str() != here)
            .map(|n| async { (n.clone(), peers.status(n, &cfg.name).await) }),
    )
    .await;
    let mut out = format!("{}\n", cfg.name);
    let mut rows = vec![(here.to_string(), local)];
    rows.extend(remote);
    rows.sort_by_key(|(n, _)| cfg.nodes.iter().position(|x| x == n).unwrap_or(usize::MAX));
    let sum = cfg.checksum();
    for (node, st) in rows {
        let line = match st {
            Ok(s) => {
                let container = s
                    .resources
                    .iter()
                    .find(|r| r.rid.starts_with("container#"))
                    .map(|r| format!("  {} {}", r.rid, r.label))
                    .unwrap_or_default();
                let cfgnote = if s.checksum == sum {
                    ""
                } else {
                    "  (config differs)"
                };
                format!("{node:<24}{:<6}{container}{cfgnote}", s.avail.as_str())
            }
            Err(e) => format!("{node:<24}{:<6}  {e}", "?"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}
