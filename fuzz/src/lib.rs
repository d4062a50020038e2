//! The bodies of ferry's fuzz targets (fuzz_targets/*.rs only call these).
//!
//! Each target runs the code ferry runs on that input and then checks what
//! an accepted input promises (the `assert!`s): a panic or a broken promise
//! is a crash for libFuzzer. Errors are fine: they are the parser's answer.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

use ferry_core::config::{self, Kind, LeaseConfig, ResourceConfig};
use ferry_core::dbus::{self, DOCKER_ALLOWED};
use ferry_core::docker_args;
use zbus::message::{Body, EndianSig, Header, Message, Type};
use zbus::names::InterfaceName;
use zbus::wire::serialized::{Context, Data};
use zbus::wire::Endian;
use zbus::Variant;

/// Inputs are texts: a config file is read with `read_to_string`, and a
/// D-Bus string is UTF-8. Invalid bytes become U+FFFD rather than being
/// thrown away, so that no input is wasted.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A service config file (`/etc/ferry/services/busybox.conf`).
pub fn service_config(data: &[u8]) {
    check_service("/etc/ferry/services/busybox.conf", &text(data));
}

/// `parse_service` and everything the helper and the frontend derive from
/// an accepted config; the promises of an accepted config.
fn check_service(file: &str, text: &str) -> Option<config::ServiceConfig> {
    let cfg = match config::parse_service(file, text) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without any message");
            let _ = e.to_string();
            return None;
        }
    };
    assert!(config::valid_service_name(&cfg.name), "{:?}", cfg.name);
    assert_eq!(cfg.text, text);
    assert_eq!(cfg.checksum().len(), 64);
    assert!(!cfg.nodes.is_empty(), "a service without nodes");
    for n in &cfg.nodes {
        assert!(config::valid_node_name(n), "node {n:?}");
    }
    if let Some(a) = &cfg.autostart_node {
        assert!(cfg.nodes.contains(a), "autostart_node {a:?} not in nodes");
    }
    let lockspace = LeaseConfig::lockspace(&cfg.name);
    assert!(lockspace.len() <= 47, "lockspace {lockspace:?} too long");
    let _ = dbus::service_path(&cfg.name);
    // Start order: by kind first (ip, lease, vg, fs, container).
    for w in cfg.resources.windows(2) {
        assert!(
            w[0].kind() <= w[1].kind(),
            "{} before {}",
            w[0].rid,
            w[1].rid
        );
    }
    for (i, r) in cfg.resources.iter().enumerate() {
        assert!(
            cfg.resources[..i].iter().all(|o| o.rid != r.rid),
            "rid {:?} twice",
            r.rid
        );
        assert_eq!(cfg.resource(&r.rid).map(|x| x.kind()), Some(r.kind()));
        assert_eq!(Kind::from_prefix(r.kind().as_str()), Some(r.kind()));
        let _ = dbus::resource_path(&cfg.name, &r.rid);
        let _ = dbus::resource_iface(r.kind());
        match &r.config {
            ResourceConfig::Fs(c) => {
                assert!(c.mnt.starts_with('/'), "mnt {:?} not absolute", c.mnt);
                assert!(
                    !c.mnt.split('/').any(|p| p == ".." || p == "."),
                    "mnt {:?} not clean",
                    c.mnt
                );
            }
            ResourceConfig::Lease(c) => {
                // Both parts of the area must be addressable.
                assert!(c
                    .resource_offset()
                    .checked_add(config::LEASE_PART_BYTES)
                    .is_some());
            }
            ResourceConfig::Ip(_) | ResourceConfig::Vg(_) | ResourceConfig::Container(_) => {}
        }
    }
    if let Some(d) = &cfg.docker_data_dir {
        // The daemon's data root lives on one of the service's filesystems.
        assert!(
            cfg.resources.iter().any(|r| match &r.config {
                ResourceConfig::Fs(c) => config::path_within(d, &c.mnt),
                _ => false,
            }),
            "docker_data_dir {d:?} outside every fs"
        );
    }
    assert_eq!(cfg.stop_order().count(), cfg.resources.len());
    let _ = config::warnings(&cfg);
    for s in cfg.sync.values() {
        for (a, b) in &s.schedule {
            assert!(*a < 24 * 60 && *b <= 24 * 60, "window {a}-{b}");
        }
        let _ = config::in_schedule(&s.schedule, 0);
    }
    Some(cfg)
}

/// The node config (`/etc/ferry/ferry.conf`: `[node]`, `[peer NAME]`).
pub fn node_config(data: &[u8]) {
    let text = text(data);
    let cfg = match config::parse_node_config("/etc/ferry/ferry.conf", &text) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without any message");
            let _ = e.to_string();
            return;
        }
    };
    if let Some(n) = &cfg.nodename {
        assert!(config::valid_node_name(n), "nodename {n:?}");
    }
    assert!((1..=120).contains(&cfg.ssh_connect_timeout));
    let mut ids = Vec::new();
    ids.extend(cfg.host_id);
    for (peer, id) in &cfg.peer_host_ids {
        // A peer's name is shown as the holder of a lease: a node name.
        assert!(config::valid_node_name(peer), "peer {peer:?}");
        ids.push(*id);
    }
    for peer in cfg.remote_mode.keys() {
        assert!(config::valid_node_name(peer), "peer {peer:?}");
        let _ = cfg.mode_for(peer);
    }
    for (i, id) in ids.iter().enumerate() {
        assert!((1..=config::MAX_HOST_ID).contains(id), "host id {id}");
        assert!(!ids[..i].contains(id), "host id {id} twice");
        assert!(cfg.node_of_host_id(*id, "this").is_some());
    }
}

/// Split fuzz bytes into arguments at NUL (a D-Bus string has no NUL).
fn args_of(data: &[u8]) -> Vec<String> {
    if data.is_empty() {
        return Vec::new();
    }
    text(data).split('\0').map(str::to_string).collect()
}

/// `Container.Docker`'s argument checks, in the helper's order, with what
/// an accepted argument list promises.
pub fn passthrough_args(data: &[u8]) {
    check_docker(&args_of(data));
}

fn check_docker(args: &[String]) {
    if docker_args::check_docker_args(args).is_err() {
        return;
    }
    let file_access = docker_args::check_file_access(args);
    let argv = docker_args::docker_argv("unix:///var/lib/ferry/busybox/docker.sock", args);
    assert_eq!(argv.len(), args.len() + 2);
    if file_access.is_err() {
        return;
    }
    assert!(DOCKER_ALLOWED.contains(&args[0].as_str()));
    let (sub, rest) = match args[0].as_str() {
        "image" => {
            assert!(
                args.len() > 1 && docker_args::IMAGE_SUBCOMMANDS.contains(&args[1].as_str()),
                "image {:?}",
                args.get(1)
            );
            (args[1].as_str(), &args[2..])
        }
        s => (s, &args[1..]),
    };
    // The flags docker's parser sees: everything before `--`.
    let flags = rest.iter().take_while(|a| *a != "--");
    let names_path_flag = |a: &str, short: char, long: &str| {
        a == long
            || a.strip_prefix(long).is_some_and(|v| v.starts_with('='))
            || (!a.starts_with("--") && a.starts_with('-') && a[1..].contains(short))
    };
    match sub {
        "load" => {
            for a in flags {
                assert!(!names_path_flag(a, 'i', "--input"), "load {a:?} passed");
            }
        }
        "save" => {
            for a in flags {
                assert!(!names_path_flag(a, 'o', "--output"), "save {a:?} passed");
            }
        }
        "import" => assert!(rest.iter().any(|a| a == "-"), "import without stdin"),
        _ => {}
    }
}

/// The body of a method call as zbus hands it to the helper's method: the
/// macro-generated code deserializes the whole body into the argument tuple,
/// and answers `InvalidArgs` when that fails.
fn args<'b, T>(body: &'b Body, f: impl FnOnce(T)) -> Option<()>
where
    T: zbus::wire::DynamicDeserialize<'b>,
{
    body.deserialize::<T>().ok().map(f)
}

/// A descriptor to pass along with a message, as a caller passes its
/// stdin/stdout/stderr.
fn dev_null() -> Option<OwnedFd> {
    static NULL: OnceLock<Option<std::fs::File>> = OnceLock::new();
    let f = NULL.get_or_init(|| std::fs::File::open("/dev/null").ok());
    f.as_ref()?.try_clone().ok().map(OwnedFd::from)
}

/// One message off the bus, to the helper: zbus's decoding of the whole
/// message (header fields, signature, body), then the dispatch of the
/// helper's object server by interface and member, the decoding of that
/// method's arguments, and the helper's own checks of them.
///
/// Input: one byte (its low 2 bits: how many descriptors came with the
/// message, 0-3), then the message bytes as read from the socket.
pub fn dbus_method(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let Some(&first) = bytes.first() else {
        return;
    };
    // As zbus's reader does: the endianness comes from the first byte.
    let Ok(sig) = EndianSig::try_from(first) else {
        return;
    };
    let fds: Vec<OwnedFd> = (0..flags & 3).filter_map(|_| dev_null()).collect();
    let ctxt = Context::new(Endian::from(sig), 0);
    let data = Data::new_fds(bytes.to_vec(), ctxt, fds);
    // SAFETY: this is what zbus does with the bytes it reads off a socket
    // (`Message::from_raw_parts`); `from_bytes` only checks them.
    let Ok(msg) = (unsafe { Message::from_bytes(data) }) else {
        return;
    };
    let hdr = msg.header();
    let _ = hdr.sender().map(|s| s.as_str().to_string());
    if hdr.message_type() != Type::MethodCall {
        return;
    }
    dispatch(&msg, &hdr);
}

/// Every method the helper exports (see dbus-interfaces/), by interface
/// and member; without an interface, the first interface with that member.
fn dispatch(msg: &Message, hdr: &Header<'_>) -> Option<()> {
    let member = hdr.member()?.as_str();
    let iface = hdr.interface().map(|i| i.as_str());
    // The object: the helper's objects are at these paths.
    if let Some(path) = hdr.path() {
        let p = path.as_str();
        let _ = p == dbus::ROOT_PATH || p.starts_with(&dbus::service_path(""));
    }
    let body = msg.body();
    let body = &body;
    let no_args = |b: &Body| args(b, |(): ()| ());
    match (iface, member) {
        // io.ferry.Helper1.Manager
        (Some("io.ferry.Helper1.Manager") | None, "ListServices" | "Reload") => no_args(body),
        (Some("io.ferry.Helper1.Manager") | None, "InstallConfig") => {
            args(body, |(service, text): (&str, &str)| {
                install_config(service, text)
            })
        }
        // io.ferry.Helper1.Service
        (Some("io.ferry.Helper1.Service") | None, "Status" | "Config" | "Unlock") => no_args(body),
        (Some("io.ferry.Helper1.Service") | None, "Lock") => args(body, |(wait_ms,): (u32,)| {
            // service.rs / lock.rs: the wait, and its deadline.
            let wait = Duration::from_millis(u64::from(wait_ms));
            let _ = std::time::Instant::now() + wait;
        }),
        // io.ferry.Helper1.Container
        (Some("io.ferry.Helper1.Container") | None, "Docker") => args(
            body,
            |(argv, stdin, stdout, stderr): (
                Vec<String>,
                zbus::OwnedFd,
                zbus::OwnedFd,
                zbus::OwnedFd,
            )| {
                check_docker(&argv);
                // passthrough.rs hands them to the CLI as std descriptors.
                let _: [OwnedFd; 3] = [stdin.into(), stdout.into(), stderr.into()];
            },
        ),
        (
            Some("io.ferry.Helper1.Container") | None,
            "Check" | "PrepareDaemon" | "StartDaemon" | "StopDaemon" | "Start" | "Stop",
        ) => no_args(body),
        // io.ferry.Helper1.Vg
        (Some("io.ferry.Helper1.Vg") | None, "Reserve") => args(body, |(force,): (bool,)| {
            let _ = if force {
                "io.ferry.vg.reserve-force"
            } else {
                "io.ferry.vg.reserve"
            };
        }),
        (
            Some("io.ferry.Helper1.Vg"),
            "Check" | "Tag" | "Untag" | "Activate" | "Deactivate" | "Release",
        ) => no_args(body),
        // io.ferry.Helper1.Ip, .Lease, .Fs
        (Some("io.ferry.Helper1.Ip"), "Check" | "Add" | "Announce" | "Remove") => no_args(body),
        (Some("io.ferry.Helper1.Lease"), "Check" | "Init" | "Acquire" | "Release") => no_args(body),
        (Some("io.ferry.Helper1.Fs"), "Check" | "Mount" | "Unmount") => no_args(body),
        (
            None,
            "Add" | "Announce" | "Remove" | "Init" | "Acquire" | "Release" | "Tag" | "Untag"
            | "Activate" | "Deactivate" | "Mount" | "Unmount",
        ) => no_args(body),
        // The properties (Rid, Settings, Name, Nodes…), read by zbus's
        // org.freedesktop.DBus.Properties on the helper's behalf.
        (Some("org.freedesktop.DBus.Properties"), "Get") => {
            args(body, |(i, p): (InterfaceName<'_>, &str)| property(&i, p))
        }
        (Some("org.freedesktop.DBus.Properties"), "GetAll") => {
            args(body, |(i,): (InterfaceName<'_>,)| property(&i, ""))
        }
        (Some("org.freedesktop.DBus.Properties"), "Set") => {
            args(body, |(i, p, v): (InterfaceName<'_>, &str, Variant<'_>)| {
                property(&i, p);
                let _ = v.value_signature();
            })
        }
        _ => None,
    }
}

/// The helper's interfaces (a property call names one).
fn property(iface: &InterfaceName<'_>, prop: &str) {
    let known = [
        dbus::MANAGER_IFACE,
        dbus::SERVICE_IFACE,
        dbus::resource_iface(Kind::Ip),
        dbus::resource_iface(Kind::Lease),
        dbus::resource_iface(Kind::Vg),
        dbus::resource_iface(Kind::Fs),
        dbus::resource_iface(Kind::Container),
    ];
    let _ = known.contains(&iface.as_str()) && !prop.is_empty();
}

/// `Manager.InstallConfig(service, text)`: manager.rs's checks, in its
/// order, before anything is written: the name, the text (as the file it
/// would become), this node among the service's nodes.
fn install_config(service: &str, text: &str) {
    if !config::valid_service_name(service) {
        return;
    }
    let path = format!("{}/{service}.conf", config::DEFAULT_SERVICES_DIR);
    // The name becomes a file name in the services directory.
    assert!(!service.contains('/') && service != "." && service != "..");
    let Some(cfg) = check_service(&path, text) else {
        return;
    };
    assert_eq!(cfg.name, service);
    let _ = cfg.nodes.iter().any(|n| n == "node1");
}
