//! The helper's records in the systemd journal, one journal field per
//! tracing field: `uid`, `action`, `service`, `rid`, `result` of an audit
//! record become `FERRY_UID`, `FERRY_ACTION`, `FERRY_SERVICE`, `FERRY_RID`,
//! `FERRY_RESULT`, so `journalctl -u ferry-helper FERRY_SERVICE=busybox`
//! lists what was done to a service.
//!
//! Why not tracing-journald: the audit module writes each caller-supplied
//! value escaped and in double quotes, so that a line of the plain-text log
//! cannot be forged. A journal field holds one value on its own, and with
//! the quotes kept `FERRY_SERVICE=busybox` would match nothing. This layer
//! drops that one pair of quotes (the escaping stays) and otherwise speaks
//! the same native protocol: one datagram per record to journald's socket.

use std::fmt::{self, Write as _};
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

const SOCKET: &str = "/run/systemd/journal/socket";
/// User fields get this prefix: journald's own fields (`_UID`, `MESSAGE`,
/// `PRIORITY`…) stay apart from ours.
const PREFIX: &str = "FERRY_";

pub struct Journald {
    socket: UnixDatagram,
}

impl Journald {
    /// Fails when journald's socket is not there.
    pub fn new() -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(SOCKET)?;
        Ok(Journald { socket })
    }
}

/// syslog priorities, as journald stores them.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A journal field name: upper case letters, digits and `_`, not starting
/// with `_` (those are journald's trusted fields).
fn field_name(name: &str) -> String {
    let mut out = String::from(PREFIX);
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

/// One pair of surrounding double quotes, as the audit module writes values.
fn unquote(value: String) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value[1..value.len() - 1].to_owned()
    } else {
        value
    }
}

/// Append `NAME=value` in the native protocol; a value with a newline goes
/// as NAME, newline, 64-bit little-endian length, the bytes, newline.
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// Collects an event's fields: the message apart, the others in order.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = unquote(value);
        } else {
            self.others.push((field.name(), unquote(value)));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields (Display) and format_args! messages arrive here and
        // print as themselves; plain Debug values print as Debug.
        self.add(field, format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);

        // MESSAGE is what `journalctl` shows by default: the message, then
        // the fields as key=value, like the plain-text log line.
        let mut message = fields.message.clone();
        for (name, value) in &fields.others {
            if !message.is_empty() {
                message.push(' ');
            }
            let _ = write!(message, "{name}={value}");
        }

        let mut buf = Vec::with_capacity(512);
        put(&mut buf, "PRIORITY", &priority(meta.level()).to_string());
        put(&mut buf, "SYSLOG_IDENTIFIER", "ferry-helper");
        put(&mut buf, "MESSAGE", &message);
        put(&mut buf, &field_name("target"), meta.target());
        for (name, value) in &fields.others {
            put(&mut buf, &field_name(name), value);
        }
        // A record that cannot be sent (journald gone, or larger than a
        // datagram: audit values are bounded, so only a runaway debug
        // line) is dropped: logging must never stop the helper.
        let _ = self.socket.send(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_upper_case() {
        assert_eq!(field_name("uid"), "FERRY_UID");
        assert_eq!(field_name("sudo_uid"), "FERRY_SUDO_UID");
        assert_eq!(field_name("log.target"), "FERRY_LOG_TARGET");
    }

    #[test]
    fn one_pair_of_quotes_goes() {
        assert_eq!(unquote("\"busybox\"".into()), "busybox");
        assert_eq!(unquote("\"a \\\"b\\\"\"".into()), "a \\\"b\\\"");
        assert_eq!(unquote("ok".into()), "ok");
        assert_eq!(unquote("\"".into()), "\"");
    }

    #[test]
    fn native_protocol() {
        let mut buf = Vec::new();
        put(&mut buf, "A", "x");
        put(&mut buf, "B", "1\n2");
        let mut want = b"A=x\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"1\n2\n");
        assert_eq!(buf, want);
    }
}
