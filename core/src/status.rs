//! Resource and service states, how they merge, and the seed's status tree.

use serde::{Deserialize, Serialize};
use std::fmt;
use zbus::zvariant::Type;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    #[serde(rename = "up")]
    Up,
    #[serde(rename = "down")]
    Down,
    #[serde(rename = "warn")]
    Warn,
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Warn => "warn",
            State::NotApplicable => "n/a",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "up" => Some(State::Up),
            "down" => Some(State::Down),
            "warn" => Some(State::Warn),
            "n/a" => Some(State::NotApplicable),
            _ => None,
        }
    }

    /// up+down → warn; anything+warn → warn; n/a is neutral.
    pub fn merge(self, other: State) -> State {
        use State::*;
        match (self, other) {
            (NotApplicable, x) | (x, NotApplicable) => x,
            (Warn, _) | (_, Warn) => Warn,
            (Up, Up) => Up,
            (Down, Down) => Down,
            (Up, Down) | (Down, Up) => Warn,
        }
    }

    pub fn merge_all(states: impl IntoIterator<Item = State>) -> State {
        states
            .into_iter()
            .fold(State::NotApplicable, |acc, s| acc.merge(s))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a lease's first comment starts when another node holds it.
pub const LEASE_HELD_ELSEWHERE: &str = "held by ";
/// A container's comment when its service's docker daemon does not answer
/// (the tutorial's wording).
pub const DAEMON_NOT_RUNNING: &str = "docker daemon is not running";
/// A container's comment when the daemon runs but has no such container.
pub const NO_CONTAINER: &str = "can not find container id";

/// How a container's comment starts when it runs, but not the image its
/// config names now: a restart cannot fix that, so it is no failure.
pub const IMAGE_DRIFT: &str = "image drift: ";
/// The rid of the entry a service's status gains when the helper runs it
/// with its last good config, because its file turned bad or untrusted:
/// `warn`, the file as label, the reason as comment. Not a resource.
pub const CONFIG_RID: &str = "config";

/// One resource's status as the helper reports it on the bus: `(sssas)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ResourceStatus {
    pub rid: String,
    /// `up`, `down`, `warn` or `n/a`
    pub state: String,
    /// What the resource is, as the seed shows it (`vgbusybox`, `dev@mnt`, …).
    pub label: String,
    /// Lines shown below the resource as `# …`.
    pub comments: Vec<String>,
}

impl ResourceStatus {
    pub fn new(rid: &str, state: State, label: impl Into<String>) -> Self {
        ResourceStatus {
            rid: rid.to_string(),
            state: state.as_str().to_string(),
            label: label.into(),
            comments: Vec::new(),
        }
    }

    pub fn with_comment(mut self, c: impl Into<String>) -> Self {
        self.comments.push(c.into());
        self
    }

    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Warn)
    }

    /// What the resource says about *this* node. A lease held by another
    /// node shows as warn, to name the holder, but nothing of the service is
    /// here: for this node's avail it is down.
    pub fn state_here(&self) -> State {
        let elsewhere = self.rid.starts_with("lease#")
            && self.state() == State::Warn
            && self
                .comments
                .first()
                .is_some_and(|c| c.starts_with(LEASE_HELD_ELSEWHERE));
        if elsewhere {
            State::Down
        } else {
            self.state()
        }
    }

    /// The `(state, label, comments)` every resource's `Check` returns.
    pub fn into_check(self) -> crate::dbus::CheckResult {
        (self.state, self.label, self.comments)
    }
}

/// A whole service on one node, as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub node: String,
    /// sha256 of the config this node runs: peers compare it for `sync`.
    pub checksum: String,
    pub overall: State,
    pub avail: State,
    pub resources: Vec<ResourceStatus>,
    pub sync: State,
    pub sync_resources: Vec<ResourceStatus>,
    pub hb: State,
}

impl ServiceStatus {
    pub fn new(
        service: &str,
        node: &str,
        checksum: &str,
        resources: Vec<ResourceStatus>,
        sync_resources: Vec<ResourceStatus>,
    ) -> Self {
        let avail = State::merge_all(resources.iter().map(ResourceStatus::state_here));
        let sync = State::merge_all(sync_resources.iter().map(ResourceStatus::state));
        let hb = State::NotApplicable;
        let overall = match (sync, hb) {
            (State::Down | State::Warn, _) | (_, State::Down | State::Warn) => State::Warn,
            _ => avail,
        };
        ServiceStatus {
            service: service.to_string(),
            node: node.to_string(),
            checksum: checksum.to_string(),
            overall,
            avail,
            resources,
            sync,
            sync_resources,
            hb,
        }
    }

    /// The seed's tree, column for column.
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.service);
        out.push('\n');
        out.push_str(&format!("{:<26}{}\n", "overall", self.overall));
        out.push_str(&format!("{:<26}{}\n", "|- avail", self.avail));
        render_children(&mut out, "|", &display_order(&self.resources));
        out.push_str(&format!("{:<26}{}\n", "|- sync", self.sync));
        render_children(
            &mut out,
            "|",
            &self.sync_resources.iter().collect::<Vec<_>>(),
        );
        out.push_str(&format!("{:<26}{}\n", "'- hb", self.hb));
        out
    }
}

/// The seed lists containers first, then disks, filesystems and addresses.
fn display_order(resources: &[ResourceStatus]) -> Vec<&ResourceStatus> {
    let rank = |rid: &str| match rid.split('#').next().unwrap_or("") {
        "container" => 0,
        "vg" => 1,
        "fs" => 2,
        "ip" => 3,
        _ => 4,
    };
    let mut v: Vec<&ResourceStatus> = resources.iter().collect();
    v.sort_by_key(|r| rank(&r.rid));
    v
}

fn render_children(out: &mut String, bar: &str, children: &[&ResourceStatus]) {
    for (i, r) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let branch = if last { "'- " } else { "|- " };
        out.push_str(&format!(
            "{bar}  {branch}{:<15}.... {:<9}{}\n",
            r.rid, r.state, r.label
        ));
        let lead = if last {
            bar.to_string()
        } else {
            format!("{bar}  |  |")
        };
        // A comment may span lines (an LVM error quoted whole): each line
        // gets its own `# ` line in the tree, or the tree would break.
        for line in r.comments.iter().flat_map(|c| comment_lines(c)) {
            out.push_str(&format!("{lead:<35}# {line}\n"));
        }
    }
}

/// The lines of one comment, without line ends; an empty comment is one
/// empty line, as before.
fn comment_lines(c: &str) -> Vec<&str> {
    let lines: Vec<&str> = c
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A final line end does not start one more line.
    match lines.split_last() {
        Some((last, rest)) if last.is_empty() && !rest.is_empty() => rest.to_vec(),
        _ => lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn a_lease_held_elsewhere_is_down_here() {
        let held = ResourceStatus::new("lease#1", State::Warn, "ls@dev")
            .with_comment(format!("{LEASE_HELD_ELSEWHERE}node2 (host_id 2)"));
        let orphan = ResourceStatus::new("lease#1", State::Warn, "ls@dev")
            .with_comment("orphaned: this node's host id holds it");
        let ip = ResourceStatus::new("ip#1", State::Down, "a@b");
        let s = ServiceStatus::new("svc", "node1", "x", vec![ip.clone(), held.clone()], vec![]);
        assert_eq!(s.avail, State::Down, "a passive node is down, not warn");
        assert_eq!(held.state_here(), State::Down);
        assert_eq!(orphan.state_here(), State::Warn);
        let s = ServiceStatus::new("svc", "node1", "x", vec![ip, orphan], vec![]);
        assert_eq!(s.avail, State::Warn);
    }

    #[test]
    fn merge_rules() {
        assert_eq!(Up.merge(Down), Warn);
        assert_eq!(Down.merge(Warn), Warn);
        assert_eq!(Up.merge(NotApplicable), Up);
        assert_eq!(State::merge_all([]), NotApplicable);
        assert_eq!(State::merge_all([Down, Down, NotApplicable]), Down);
    }

    /// The seed's first status, reproduced byte for byte.
    #[test]
    fn tree_matches_seed() {
        let res = vec![
            ResourceStatus::new("ip#1", Up, "busybox.opensvc.com@eth0"),
            ResourceStatus::new("vg#1", Up, "vgbusybox"),
            ResourceStatus::new(
                "fs#1",
                Up,
                "/dev/mapper/vgbusybox-lvbusyboxroot@/opt/busybox.opensvc.com",
            ),
            ResourceStatus::new("container#1", Down, "opensvc/busybox:date")
                .with_comment("can not find container id"),
        ];
        let sync =
            vec![
                ResourceStatus::new("sync#i0", Down, "rsync svc config to drpnodes, nodes")
                    .with_comment("deb2.opensvc.com need update"),
            ];
        let s = ServiceStatus::new("busybox.opensvc.com", "deb1", "x", res, sync);
        let expected = "busybox.opensvc.com
overall                   warn
|- avail                  warn
|  |- container#1    .... down     opensvc/busybox:date
|  |  |                            # can not find container id
|  |- vg#1           .... up       vgbusybox
|  |- fs#1           .... up       /dev/mapper/vgbusybox-lvbusyboxroot@/opt/busybox.opensvc.com
|  '- ip#1           .... up       busybox.opensvc.com@eth0
|- sync                   down
|  '- sync#i0        .... down     rsync svc config to drpnodes, nodes
|                                  # deb2.opensvc.com need update
'- hb                     n/a
";
        assert_eq!(s.render_tree(), expected);
    }

    #[test]
    fn passive_node_is_down_with_sync_up() {
        let s = ServiceStatus::new(
            "svc",
            "n2",
            "x",
            vec![ResourceStatus::new("ip#1", Down, "x")],
            vec![ResourceStatus::new("sync#i0", Up, "x")],
        );
        assert_eq!((s.overall, s.avail, s.sync), (Down, Down, Up));
    }

    #[test]
    fn multi_line_comments_stay_inside_the_tree() {
        let res = vec![
            ResourceStatus::new("vg#1", Warn, "vgbusybox").with_comment(
                "vgs failed:\n  Volume group \"vgbusybox\" not found\r\n  Cannot process volume group vgbusybox\n",
            ),
            ResourceStatus::new("ip#1", Down, "x").with_comment("a\n\nb"),
        ];
        let s = ServiceStatus::new("svc", "n1", "x", res, vec![]);
        let expected = "svc
overall                   warn
|- avail                  warn
|  |- vg#1           .... warn     vgbusybox
|  |  |                            # vgs failed:
|  |  |                            #   Volume group \"vgbusybox\" not found
|  |  |                            #   Cannot process volume group vgbusybox
|  '- ip#1           .... down     x
|                                  # a
|                                  # 
|                                  # b
|- sync                   n/a
'- hb                     n/a
";
        assert_eq!(s.render_tree(), expected);
        assert_eq!(comment_lines(""), vec![""]);
        assert_eq!(comment_lines("x\n"), vec!["x"]);
    }
}
