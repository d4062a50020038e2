//! The command line of `ferry-helper`, here rather than in the helper so
//! that the frontend's build-time generator can render ferry-helper(8) from
//! the very definition the helper parses.

use clap::Parser;

/// What `ferry-helper --help` says; also the DESCRIPTION of ferry-helper(8).
const LONG_ABOUT: &str = "\
ferry-helper is the root daemon behind the D-Bus name io.ferry.Helper1 on the \
system bus. It exports one object per service and per resource, asks polkit \
before every mutating call, and runs the resource drivers (address, volume \
group, filesystem, container). It reads what to do from the root-owned \
configs in /etc/ferry/services and never takes a path, a device or a command \
line from a caller.

It is not meant to be run by hand: the system bus starts it on the first call \
(through systemd's ferry-helper.service where systemd runs). It needs root with \
CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN and refuses to start without them.

Under systemd it logs to the journal with structured fields: each audit \
record carries FERRY_ACTION, FERRY_SERVICE, FERRY_RID, FERRY_UID and \
FERRY_RESULT, so `journalctl -u ferry-helper FERRY_SERVICE=NAME` lists what \
was done to a service. Elsewhere it logs to standard error.

Environment: RUST_LOG (log filter, default info), FERRY_CONFIG_DIR (the \
service config directory, default /etc/ferry/services), FERRY_NODE_CONFIG \
(default /etc/ferry/ferry.conf).";

#[derive(Parser, Debug)]
#[command(
    name = "ferry-helper",
    version,
    about = "Privileged helper of ferry on the D-Bus system bus (io.ferry.Helper1)",
    long_about = LONG_ABOUT
)]
pub struct HelperArgs {}
