//! The service configuration: one INI file per service, in the seed's format.
//!
//! Parsing is two passes over the same text: rust-ini reads the values, and a
//! line scan records where each section and key stands, so that every error
//! can say `FILE:LINE: [section] key: what is wrong`. All errors of a file are
//! collected and reported together.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where service configs live on a node (overridable with `FERRY_CONFIG_DIR`
/// for tests; the helper reads its own copy, root-owned).
pub const DEFAULT_SERVICES_DIR: &str = "/etc/ferry/services";
/// The node-wide settings file.
pub const DEFAULT_NODE_CONFIG: &str = "/etc/ferry/ferry.conf";

/// Default window of the free-address ARP probe, in milliseconds.
pub const DEFAULT_PROBE_MS: u32 = 200;
/// Default time a container gets to stop on SIGTERM before it is killed.
pub const DEFAULT_STOP_TIMEOUT_S: u32 = 10;

/// One configuration error, positioned in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub section: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.file, self.line)?;
        if let Some(s) = &self.section {
            write!(f, " [{s}]")?;
        }
        if let Some(k) = &self.key {
            write!(f, " {k}")?;
        }
        if self.section.is_some() || self.key.is_some() {
            write!(f, ":")?;
        }
        write!(f, " {}", self.message)
    }
}

/// All the errors found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub ipdev: String,
    pub ipname: String,
    pub netmask: Option<u8>,
    /// How long the free-address probe listens for an answer.
    pub probe_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgConfig {
    pub vgname: String,
    pub scsireserv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub dev: String,
    pub mnt: String,
    pub fstype: String,
    pub mnt_opt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `type`: which engine runs the container.
    #[serde(default)]
    pub runtime: ContainerRuntime,
    pub run_image: String,
    pub stop_timeout: u32,
    /// `ulimit` (podman only): `name=soft[:hard]` limits the container is
    /// created with. Empty: podman's defaults.
    #[serde(default)]
    pub ulimits: Vec<String>,
}

/// `[container#N] type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerRuntime {
    /// A private dockerd (with `docker_data_dir`) or the host's.
    #[default]
    Docker,
    /// Rootful podman with its storage in `podman_data_dir`: no daemon.
    Podman,
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Podman => "podman",
        }
    }
}

/// A sanlock disk lease: the shared storage itself says which node may use
/// the service's disks. The area at `dev` from `offset` holds the lockspace
/// (1 MiB) and then the service's resource lease (1 MiB); it must lie
/// outside any filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseConfig {
    pub dev: String,
    pub offset: u64,
    /// sanlock's io_timeout in seconds: 10 suits a SAN; the lab uses 1.
    pub io_timeout: u32,
}

/// The size of each of the two parts of a lease area.
pub const LEASE_PART_BYTES: u64 = 1024 * 1024;
/// Default sanlock io_timeout (seconds).
pub const DEFAULT_LEASE_IO_TIMEOUT: u32 = 10;
/// sanlock allows host ids 1..=2000.
pub const MAX_HOST_ID: u64 = 2000;

impl LeaseConfig {
    /// The lockspace name for a service: sanlock names hold at most 47
    /// bytes, service names up to 64, so long names keep a prefix and a
    /// hash that stays unique.
    pub fn lockspace(service: &str) -> String {
        let name = format!("ferry-{service}");
        if name.len() <= 47 {
            name
        } else {
            format!("ferry-{}-{}", &service[..24], &checksum(service)[..16])
        }
    }

    /// The service's resource lease inside its lockspace.
    pub const RESOURCE: &'static str = "service";

    /// Where the resource lease starts.
    pub fn resource_offset(&self) -> u64 {
        self.offset + LEASE_PART_BYTES
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncConfig {
    /// Windows `(start, end)` in minutes since midnight, local time; empty = always.
    pub schedule: Vec<(u16, u16)>,
    pub schedule_text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceConfig {
    Ip(IpConfig),
    Lease(LeaseConfig),
    Vg(VgConfig),
    Fs(FsConfig),
    Container(ContainerConfig),
}

/// The kinds of resource, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Ip,
    Lease,
    Vg,
    Fs,
    Container,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Lease => "lease",
            Kind::Vg => "vg",
            Kind::Fs => "fs",
            Kind::Container => "container",
        }
    }
    pub fn from_prefix(s: &str) -> Option<Kind> {
        match s {
            "ip" => Some(Kind::Ip),
            "lease" => Some(Kind::Lease),
            "vg" => Some(Kind::Vg),
            "fs" => Some(Kind::Fs),
            "container" => Some(Kind::Container),
            _ => None,
        }
    }
}

/// One kind's settings, taken out of a [`ResourceConfig`]: lets code that
/// serves one kind ask for its own settings without matching every kind.
pub trait KindConfig: Sized {
    const KIND: Kind;
    fn from_resource(c: ResourceConfig) -> Option<Self>;
}

macro_rules! kind_config {
    ($t:ty, $variant:ident) => {
        impl KindConfig for $t {
            const KIND: Kind = Kind::$variant;
            fn from_resource(c: ResourceConfig) -> Option<Self> {
                match c {
                    ResourceConfig::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
kind_config!(IpConfig, Ip);
kind_config!(LeaseConfig, Lease);
kind_config!(VgConfig, Vg);
kind_config!(FsConfig, Fs);
kind_config!(ContainerConfig, Container);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub rid: String,
    pub config: ResourceConfig,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self.config {
            ResourceConfig::Ip(_) => Kind::Ip,
            ResourceConfig::Lease(_) => Kind::Lease,
            ResourceConfig::Vg(_) => Kind::Vg,
            ResourceConfig::Fs(_) => Kind::Fs,
            ResourceConfig::Container(_) => Kind::Container,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub name: String,
    pub nodes: Vec<String>,
    pub autostart_node: Option<String>,
    pub app: Option<String>,
    pub service_type: Option<String>,
    pub docker_data_dir: Option<String>,
    pub docker_daemon_args: Vec<String>,
    /// Podman's storage root (`--root`) on the shared fs, for the
    /// `type = podman` containers.
    #[serde(default)]
    pub podman_data_dir: Option<String>,
    /// Resources in start order: ip, vg, fs (by mountpoint depth), container.
    pub resources: Vec<Resource>,
    pub sync: BTreeMap<String, SyncConfig>,
    /// The exact text the config was parsed from.
    pub text: String,
}

impl ServiceConfig {
    /// sha256 of the text: two nodes run the same config when these match.
    pub fn checksum(&self) -> String {
        checksum(&self.text)
    }

    pub fn resource(&self, rid: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.rid == rid)
    }

    /// The rids in stop order (the exact reverse of start order).
    pub fn stop_order(&self) -> impl Iterator<Item = &Resource> {
        self.resources.iter().rev()
    }
}

pub fn checksum(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A service name is used in paths, object paths and polkit details.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Node names are host names.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The service name a config file stands for: `<svc>.conf`.
pub fn service_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file.strip_suffix(".conf")?;
    valid_service_name(name).then(|| name.to_string())
}

/// Where each section and key of the text stands (1-based lines).
#[derive(Default)]
struct Positions {
    sections: Vec<(String, usize)>,
    /// The first line of each section, for lookups in constant time (a
    /// linear search per error made big files quadratic).
    section_first: HashMap<String, usize>,
    keys: HashMap<(String, String), Vec<usize>>,
    /// Keys that precede any section header.
    orphan_keys: Vec<(String, usize)>,
    /// Lines that are neither a section, a `key = value` nor a comment.
    malformed: Vec<(usize, String)>,
}

fn scan_positions(text: &str) -> Positions {
    let mut pos = Positions::default();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if !rest.contains(']') {
                pos.malformed.push((
                    i + 1,
                    format!("syntax error: section header '{line}' has no closing ']'"),
                ));
                continue;
            }
            let name = rest.split(']').next().unwrap_or("").trim().to_string();
            pos.sections.push((name.clone(), i + 1));
            pos.section_first.entry(name.clone()).or_insert(i + 1);
            current = Some(name);
            continue;
        }
        // rust-ini splits a key at the first '=' or ':'
        let Some(sep) = line.find(['=', ':']) else {
            pos.malformed.push((
                i + 1,
                format!("syntax error: '{line}' is not 'key = value'"),
            ));
            continue;
        };
        let key = line[..sep].trim().to_string();
        match &current {
            Some(s) => pos.keys.entry((s.clone(), key)).or_default().push(i + 1),
            None => pos.orphan_keys.push((key, i + 1)),
        }
    }
    pos
}

struct Checker<'a> {
    file: &'a str,
    pos: Positions,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn section_line(&self, section: &str) -> usize {
        self.pos.section_first.get(section).copied().unwrap_or(1)
    }

    fn key_line(&self, section: &str, key: &str) -> usize {
        self.pos
            .keys
            .get(&(section.to_string(), key.to_string()))
            .and_then(|v| v.first().copied())
            .unwrap_or_else(|| self.section_line(section))
    }

    fn err(&mut self, section: &str, key: Option<&str>, message: impl Into<String>) {
        let line = match key {
            Some(k) => self.key_line(section, k),
            None => self.section_line(section),
        };
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            section: Some(section.to_string()),
            key: key.map(str::to_string),
            message: message.into(),
        });
    }
}

/// Reads one section's keys, flagging unknown ones and finding required ones.
struct SectionReader<'s> {
    name: String,
    values: BTreeMap<String, String>,
    allowed: &'s [&'s str],
}

impl SectionReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        debug_assert!(self.allowed.contains(&key));
        self.values.get(key).map(String::as_str)
    }

    fn required(&self, ck: &mut Checker<'_>, key: &str) -> Option<String> {
        match self.get(key) {
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            Some(_) => {
                ck.err(&self.name, Some(key), "must not be empty");
                None
            }
            None => {
                ck.err(&self.name, Some(key), "missing required key");
                None
            }
        }
    }

    /// A value that ends up as a program argument must not read as an option.
    fn not_option(&self, ck: &mut Checker<'_>, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if v.starts_with('-') => {
                ck.err(
                    &self.name,
                    Some(key),
                    format!("'{v}' starts with '-' and would be read as an option"),
                );
                None
            }
            other => other,
        }
    }

    fn bool(&self, ck: &mut Checker<'_>, key: &str, default: bool) -> bool {
        match self.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) => match v.as_str() {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => {
                    ck.err(
                        &self.name,
                        Some(key),
                        format!("'{v}' is not a boolean (true/false)"),
                    );
                    default
                }
            },
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &self,
        ck: &mut Checker<'_>,
        key: &str,
        default: T,
        range: (T, T),
    ) -> T {
        let Some(v) = self.get(key).map(str::trim) else {
            return default;
        };
        match v.parse::<T>() {
            Ok(n) if n >= range.0 && n <= range.1 => n,
            _ => {
                ck.err(
                    &self.name,
                    Some(key),
                    format!("'{v}' is not a number from {} to {}", range.0, range.1),
                );
                default
            }
        }
    }
}

const DEFAULT_KEYS: &[&str] = &[
    "nodes",
    "autostart_node",
    "app",
    "service_type",
    "docker_data_dir",
    "docker_daemon_args",
    "podman_data_dir",
    "comment",
];
const IP_KEYS: &[&str] = &["ipdev", "ipname", "netmask", "probe_ms"];
const VG_KEYS: &[&str] = &["vgname", "scsireserv"];
const LEASE_KEYS: &[&str] = &["dev", "offset", "io_timeout"];
const FS_KEYS: &[&str] = &["dev", "mnt", "type", "mnt_opt"];
const CONTAINER_KEYS: &[&str] = &["type", "run_image", "stop_timeout", "ulimit"];
const SYNC_KEYS: &[&str] = &["schedule"];

/// dockerd options ferry sets itself for a private daemon: letting the config
/// override them would point the daemon at another node's state.
const RESERVED_DOCKERD_ARGS: &[&str] = &[
    "-H",
    "--host",
    "--data-root",
    "-g",
    "--graph",
    "--exec-root",
    "--pidfile",
    "-p",
    "--containerd",
    "--config-file",
    // containers share the node's network: no bridge, no NAT rules
    "--bridge",
    "-b",
    "--iptables",
    "--ip6tables",
    "--ip-masq",
];

/// Is `arg` one of the reserved options, in any spelling dockerd accepts:
/// `--opt`, `--opt=value`, `-H value`, `-Hvalue`?
fn reserved_dockerd_arg(arg: &str) -> Option<&'static str> {
    RESERVED_DOCKERD_ARGS.iter().copied().find(|opt| {
        if opt.starts_with("--") {
            arg == *opt || arg.starts_with(&format!("{opt}="))
        } else {
            arg.starts_with(opt)
        }
    })
}

/// Absolute, and written the one way the kernel reports it: no `.`, `..`,
/// `//` or trailing `/`. Mount state is matched against /proc/self/mountinfo
/// by this string, so `/srv/a/` would never be seen as mounted.
fn is_absolute_clean(p: &str) -> bool {
    let path = Path::new(p);
    let normal: PathBuf = path.components().collect();
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && normal.as_os_str() == path.as_os_str()
}

/// A path sanlock takes as is: no whitespace, ':' or '\\' (its separators
/// and escape in "LS:RES:path:offset" state strings), no control characters.
pub fn is_sanlock_path(p: &str) -> bool {
    !p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '\\')
}

/// True when `inner` is `outer` or below it, compared by path components.
pub fn path_within(inner: &str, outer: &str) -> bool {
    Path::new(inner).starts_with(Path::new(outer))
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `03:59-05:59` or several such windows separated by spaces or commas.
pub fn parse_schedule(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut windows = Vec::new();
    for w in text.split([' ', ',']).filter(|w| !w.is_empty()) {
        let parsed = w
            .split_once('-')
            .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)));
        match parsed {
            Some(win) => windows.push(win),
            None => return Err(format!("'{w}' is not a window HH:MM-HH:MM")),
        }
    }
    Ok(windows)
}

/// Is `minute` (since midnight) inside one of the windows? A window whose end
/// is before its start spans midnight.
pub fn in_schedule(windows: &[(u16, u16)], minute: u16) -> bool {
    windows.is_empty()
        || windows.iter().any(|&(a, b)| {
            if a <= b {
                minute >= a && minute <= b
            } else {
                minute >= a || minute <= b
            }
        })
}

/// Parse and validate the text of `<file>`, whose name gives the service name.
pub fn parse_service(file: &str, text: &str) -> Result<ServiceConfig, ConfigErrors> {
    let name = service_name_of(Path::new(file));
    let mut ck = Checker {
        file,
        pos: scan_positions(text),
        errors: Vec::new(),
    };
    if name.is_none() {
        ck.errors.push(ConfigError {
            file: file.to_string(),
            line: 1,
            section: None,
            key: None,
            message: "the file name must be <service>.conf, the service name made of letters, \
                      digits, '.', '-' and '_'"
                .into(),
        });
    }
    if !ck.pos.malformed.is_empty() {
        for (line, message) in std::mem::take(&mut ck.pos.malformed) {
            ck.errors.push(ConfigError {
                file: file.to_string(),
                line,
                section: None,
                key: None,
                message,
            });
        }
        return Err(ConfigErrors(ck.errors));
    }
    let opt = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..Default::default()
    };
    let ini = match ini::Ini::load_from_str_opt(text, opt) {
        Ok(ini) => ini,
        Err(e) => {
            ck.errors.push(ConfigError {
                file: file.to_string(),
                line: e.line + 1,
                section: None,
                key: None,
                message: format!("syntax error: {}", e.msg),
            });
            return Err(ConfigErrors(ck.errors));
        }
    };

    for (key, line) in std::mem::take(&mut ck.pos.orphan_keys) {
        ck.errors.push(ConfigError {
            file: file.to_string(),
            line,
            section: None,
            key: Some(key),
            message: "key outside any section (put it under [DEFAULT])".into(),
        });
    }

    // Duplicate sections and keys: rust-ini would merge or shadow them.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (s, line) in ck.pos.sections.clone() {
        if let Some(first) = seen.insert(s.clone(), line) {
            ck.errors.push(ConfigError {
                file: file.to_string(),
                line,
                section: Some(s),
                key: None,
                message: format!("duplicate section (first defined at line {first})"),
            });
        }
    }
    let mut dup_keys: Vec<_> = ck
        .pos
        .keys
        .iter()
        .filter(|(_, lines)| lines.len() > 1)
        .map(|((s, k), lines)| (s.clone(), k.clone(), lines.clone()))
        .collect();
    dup_keys.sort();
    for (s, k, lines) in dup_keys {
        ck.errors.push(ConfigError {
            file: file.to_string(),
            line: lines[1],
            section: Some(s),
            key: Some(k),
            message: format!("duplicate key (first set at line {})", lines[0]),
        });
    }

    let mut sections: Vec<SectionReader<'_>> = Vec::new();
    // Names already read: a set, since a scan of `sections` per section was
    // quadratic in the number of sections.
    let mut read: HashSet<&str> = HashSet::new();
    for (sec, props) in ini.iter() {
        let Some(sec) = sec else { continue };
        let allowed: &[&str] = if sec == "DEFAULT" {
            DEFAULT_KEYS
        } else {
            match sec.split_once('#') {
                Some((kind, id))
                    if !id.is_empty()
                        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    match kind {
                        "ip" => IP_KEYS,
                        "lease" => LEASE_KEYS,
                        "vg" => VG_KEYS,
                        "fs" => FS_KEYS,
                        "container" => CONTAINER_KEYS,
                        "sync" => SYNC_KEYS,
                        _ => {
                            ck.err(
                                sec,
                                None,
                                format!("unknown section: '{kind}' is not a resource kind (ip, lease, vg, fs, container, sync)"),
                            );
                            continue;
                        }
                    }
                }
                _ => {
                    ck.err(
                        sec,
                        None,
                        "unknown section: expected [DEFAULT] or [<kind>#<id>], e.g. [fs#1]",
                    );
                    continue;
                }
            }
        };
        if !read.insert(sec) {
            continue; // reported as a duplicate above
        }
        let mut values = BTreeMap::new();
        for (k, v) in props.iter() {
            if !allowed.contains(&k) {
                ck.err(
                    sec,
                    Some(k),
                    format!("unknown key (known keys: {})", allowed.join(", ")),
                );
                continue;
            }
            values.insert(k.to_string(), v.to_string());
        }
        sections.push(SectionReader {
            name: sec.to_string(),
            values,
            allowed,
        });
    }

    let empty_default = SectionReader {
        name: "DEFAULT".into(),
        values: BTreeMap::new(),
        allowed: DEFAULT_KEYS,
    };
    let default = sections
        .iter()
        .find(|s| s.name == "DEFAULT")
        .unwrap_or(&empty_default);

    let nodes: Vec<String> = match default.required(&mut ck, "nodes") {
        Some(v) => v.split_whitespace().map(str::to_string).collect(),
        None => Vec::new(),
    };
    for n in &nodes {
        if !valid_node_name(n) {
            ck.err(
                "DEFAULT",
                Some("nodes"),
                format!("'{n}' is not a valid node name"),
            );
        }
    }
    let autostart_node = default.get("autostart_node").map(|s| s.trim().to_string());
    if let Some(a) = &autostart_node {
        if !nodes.is_empty() && !nodes.contains(a) {
            ck.err(
                "DEFAULT",
                Some("autostart_node"),
                format!("'{a}' is not one of nodes ({})", nodes.join(" ")),
            );
        }
    }
    let docker_data_dir = default.get("docker_data_dir").map(|s| s.trim().to_string());
    if let Some(d) = &docker_data_dir {
        if !is_absolute_clean(d) {
            ck.err(
                "DEFAULT",
                Some("docker_data_dir"),
                format!("'{d}' must be an absolute path without '.' or '..'"),
            );
        }
    }
    let podman_data_dir = default.get("podman_data_dir").map(|s| s.trim().to_string());
    if let Some(d) = &podman_data_dir {
        if !is_absolute_clean(d) {
            ck.err(
                "DEFAULT",
                Some("podman_data_dir"),
                format!("'{d}' must be an absolute path without '.' or '..'"),
            );
        }
    }
    let docker_daemon_args: Vec<String> = default
        .get("docker_daemon_args")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    for a in &docker_daemon_args {
        if let Some(opt) = reserved_dockerd_arg(a) {
            ck.err(
                "DEFAULT",
                Some("docker_daemon_args"),
                format!("'{opt}' is set by ferry for the service's private daemon and cannot be overridden"),
            );
        }
    }

    let mut resources = Vec::new();
    let mut sync = BTreeMap::new();
    for s in &sections {
        let Some((kind, _)) = s.name.split_once('#') else {
            continue;
        };
        let config = match kind {
            "ip" => {
                let ipdev = s.required(&mut ck, "ipdev");
                let ipdev = s.not_option(&mut ck, "ipdev", ipdev);
                if let Some(d) = &ipdev {
                    if d.len() > 15 || d.contains(['/', ' ']) {
                        ck.err(
                            &s.name,
                            Some("ipdev"),
                            format!("'{d}' is not an interface name"),
                        );
                    }
                }
                let ipname = s.required(&mut ck, "ipname");
                let ipname = s.not_option(&mut ck, "ipname", ipname);
                let netmask = s
                    .get("netmask")
                    .map(|_| s.number::<u8>(&mut ck, "netmask", 24, (1, 32)));
                let probe_ms = s.number::<u32>(&mut ck, "probe_ms", DEFAULT_PROBE_MS, (10, 5000));
                match (ipdev, ipname) {
                    (Some(ipdev), Some(ipname)) => Some(ResourceConfig::Ip(IpConfig {
                        ipdev,
                        ipname,
                        netmask,
                        probe_ms,
                    })),
                    _ => None,
                }
            }
            "lease" => {
                let dev = s.required(&mut ck, "dev");
                let dev = s.not_option(&mut ck, "dev", dev);
                if let Some(d) = &dev {
                    if !is_absolute_clean(d) {
                        ck.err(
                            &s.name,
                            Some("dev"),
                            format!("'{d}' must be an absolute device path"),
                        );
                    } else if !is_sanlock_path(d) {
                        ck.err(
                            &s.name,
                            Some("dev"),
                            format!(
                                "'{d}': a lease path must not contain spaces, colons, backslashes \
                                 or control characters (sanlock lists leases as \
                                 'lockspace:resource:path:offset' separated by spaces)"
                            ),
                        );
                    }
                }
                let offset = s.number::<u64>(&mut ck, "offset", 0, (0, u64::MAX / 2));
                if offset % LEASE_PART_BYTES != 0 {
                    ck.err(
                        &s.name,
                        Some("offset"),
                        format!("{offset} is not a multiple of 1 MiB ({LEASE_PART_BYTES} bytes)"),
                    );
                }
                let io_timeout =
                    s.number::<u32>(&mut ck, "io_timeout", DEFAULT_LEASE_IO_TIMEOUT, (1, 300));
                dev.map(|dev| {
                    ResourceConfig::Lease(LeaseConfig {
                        dev,
                        offset,
                        io_timeout,
                    })
                })
            }
            "vg" => {
                let vgname = s.required(&mut ck, "vgname");
                let vgname = s.not_option(&mut ck, "vgname", vgname);
                if let Some(v) = &vgname {
                    if !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
                    {
                        ck.err(
                            &s.name,
                            Some("vgname"),
                            format!("'{v}' is not a volume group name"),
                        );
                    }
                }
                let scsireserv = s.bool(&mut ck, "scsireserv", false);
                vgname.map(|vgname| ResourceConfig::Vg(VgConfig { vgname, scsireserv }))
            }
            "fs" => {
                let dev = s.required(&mut ck, "dev");
                let dev = s.not_option(&mut ck, "dev", dev);
                if let Some(d) = &dev {
                    if !is_absolute_clean(d) {
                        ck.err(
                            &s.name,
                            Some("dev"),
                            format!("'{d}' must be an absolute device path"),
                        );
                    }
                }
                let mnt = s.required(&mut ck, "mnt");
                let mnt = s.not_option(&mut ck, "mnt", mnt);
                if let Some(m) = &mnt {
                    if !is_absolute_clean(m) {
                        ck.err(
                            &s.name,
                            Some("mnt"),
                            format!("'{m}' must be an absolute path without '.' or '..'"),
                        );
                    } else if m == "/" {
                        ck.err(&s.name, Some("mnt"), "a service cannot mount over /");
                    }
                }
                let fstype = s.required(&mut ck, "type");
                if let Some(t) = &fstype {
                    if !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                    {
                        ck.err(
                            &s.name,
                            Some("type"),
                            format!("'{t}' is not a filesystem type"),
                        );
                    }
                }
                let mnt_opt = s.get("mnt_opt").map(|o| o.trim().to_string());
                let mnt_opt = s.not_option(&mut ck, "mnt_opt", mnt_opt);
                match (dev, mnt, fstype) {
                    (Some(dev), Some(mnt), Some(fstype)) => Some(ResourceConfig::Fs(FsConfig {
                        dev,
                        mnt,
                        fstype,
                        mnt_opt,
                    })),
                    _ => None,
                }
            }
            "container" => {
                let runtime = match s.required(&mut ck, "type").as_deref() {
                    Some("docker") | None => ContainerRuntime::Docker,
                    Some("podman") => ContainerRuntime::Podman,
                    Some(t) => {
                        ck.err(
                            &s.name,
                            Some("type"),
                            format!("'{t}' is not supported (docker or podman)"),
                        );
                        ContainerRuntime::Docker
                    }
                };
                let image = s.required(&mut ck, "run_image");
                let image = s.not_option(&mut ck, "run_image", image);
                let stop_timeout =
                    s.number::<u32>(&mut ck, "stop_timeout", DEFAULT_STOP_TIMEOUT_S, (0, 3600));
                let ulimits: Vec<String> = s
                    .get("ulimit")
                    .map(|v| v.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                if !ulimits.is_empty() && runtime != ContainerRuntime::Podman {
                    ck.err(
                        &s.name,
                        Some("ulimit"),
                        "only for type = podman (a private dockerd takes --default-ulimit in docker_daemon_args)",
                    );
                }
                for u in &ulimits {
                    if let Err(e) = check_ulimit(u) {
                        ck.err(&s.name, Some("ulimit"), e);
                    }
                }
                image.map(|run_image| {
                    ResourceConfig::Container(ContainerConfig {
                        runtime,
                        run_image,
                        stop_timeout,
                        ulimits,
                    })
                })
            }
            "sync" => {
                let text = s.get("schedule").unwrap_or("").trim().to_string();
                match parse_schedule(&text) {
                    Ok(schedule) => {
                        sync.insert(
                            s.name.clone(),
                            SyncConfig {
                                schedule,
                                schedule_text: text,
                            },
                        );
                    }
                    Err(e) => ck.err(&s.name, Some("schedule"), e),
                }
                None
            }
            _ => None,
        };
        if let Some(config) = config {
            resources.push(Resource {
                rid: s.name.clone(),
                config,
            });
        }
    }

    // Two fs on one mountpoint, and a data root that no fs holds.
    let mut mnts: Vec<(&str, &str)> = Vec::new();
    // mountpoint → the first fs on it (a map: a scan per fs was quadratic)
    let mut mnt_owner: HashMap<&str, &str> = HashMap::new();
    for r in &resources {
        if let ResourceConfig::Fs(fs) = &r.config {
            if let Some(other) = mnt_owner.get(fs.mnt.as_str()) {
                ck.err(
                    &r.rid,
                    Some("mnt"),
                    format!("'{}' is already the mountpoint of [{other}]", fs.mnt),
                );
            } else {
                mnt_owner.insert(&fs.mnt, &r.rid);
            }
            mnts.push((&r.rid, &fs.mnt));
        }
    }
    let runs = |rt: ContainerRuntime| {
        resources
            .iter()
            .any(|r| matches!(&r.config, ResourceConfig::Container(c) if c.runtime == rt))
    };
    for (key, dir) in [
        ("docker_data_dir", &docker_data_dir),
        ("podman_data_dir", &podman_data_dir),
    ] {
        if let Some(d) = dir {
            if is_absolute_clean(d) && !mnts.iter().any(|(_, m)| path_within(d, m)) {
                ck.err(
                    "DEFAULT",
                    Some(key),
                    format!("'{d}' is not inside any fs mountpoint: the container data would not follow the service"),
                );
            }
        }
    }
    if docker_data_dir.is_some() && !runs(ContainerRuntime::Docker) {
        ck.err(
            "DEFAULT",
            Some("docker_data_dir"),
            if runs(ContainerRuntime::Podman) {
                "set, but the service has no docker container (podman keeps its storage in podman_data_dir)"
            } else {
                "set, but the service has no container resource"
            },
        );
    }
    if podman_data_dir.is_some() && !runs(ContainerRuntime::Podman) {
        ck.err(
            "DEFAULT",
            Some("podman_data_dir"),
            "set, but the service has no container of type = podman",
        );
    }
    if podman_data_dir.is_none() && runs(ContainerRuntime::Podman) {
        // Without it podman would use the host's /var/lib/containers: the
        // container would neither follow the service nor stay its own.
        ck.err(
            "DEFAULT",
            Some("podman_data_dir"),
            "required by the type = podman container: podman's storage root on the service's filesystem",
        );
    }
    // Two engines in one store would each take the other's files for theirs.
    if let (Some(d), Some(p)) = (&docker_data_dir, &podman_data_dir) {
        if path_within(d, p) || path_within(p, d) {
            ck.err(
                "DEFAULT",
                Some("podman_data_dir"),
                format!("'{p}' overlaps docker_data_dir '{d}': each engine needs a directory of its own"),
            );
        }
    }
    // One lease per service, outside every filesystem of it.
    let leases: Vec<(&str, &LeaseConfig)> = resources
        .iter()
        .filter_map(|r| match &r.config {
            ResourceConfig::Lease(l) => Some((r.rid.as_str(), l)),
            _ => None,
        })
        .collect();
    if let [_, (second, _), ..] = leases.as_slice() {
        ck.err(
            second,
            None,
            format!("a service has at most one lease ([{}] is one)", leases[0].0),
        );
    }
    for (rid, l) in &leases {
        for r in &resources {
            if let ResourceConfig::Fs(fs) = &r.config {
                if fs.dev == l.dev {
                    ck.err(
                        rid,
                        Some("dev"),
                        format!(
                            "'{}' is also the device of [{}]: the lease area must lie outside any filesystem",
                            l.dev, r.rid
                        ),
                    );
                }
            }
        }
    }
    if docker_data_dir.is_none() && resources.iter().any(|r| r.kind() == Kind::Container) {
        // Allowed: the host's own docker daemon is used.
    }

    if !ck.errors.is_empty() {
        ck.errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(ck.errors));
    }

    resources.sort_by_key(start_key);
    Ok(ServiceConfig {
        name: name.unwrap_or_default(),
        nodes,
        autostart_node,
        app: default.get("app").map(|s| s.trim().to_string()),
        service_type: default.get("service_type").map(|s| s.trim().to_string()),
        docker_data_dir,
        docker_daemon_args,
        podman_data_dir,
        resources,
        sync,
        text: text.to_string(),
    })
}

/// One `ulimit` value: `name=soft[:hard]` (podman's `--ulimit` syntax),
/// numbers or -1 (unlimited); nothing else reaches podman's command line.
pub fn check_ulimit(u: &str) -> Result<(), String> {
    let bad = || format!("'{u}' is not name=soft[:hard] (e.g. nofile=1024:1024)");
    let (name, limits) = u.split_once('=').ok_or_else(bad)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(bad());
    }
    let number = |n: &str| {
        n == "-1" || (!n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let ok = match limits.split_once(':') {
        Some((soft, hard)) => number(soft) && number(hard),
        None => number(limits),
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Start order: kind first; filesystems by mountpoint depth so that a
/// parent is mounted before what is mounted below it; then the rid.
fn start_key(r: &Resource) -> (Kind, usize, String) {
    let depth = match &r.config {
        ResourceConfig::Fs(fs) => Path::new(&fs.mnt).components().count(),
        _ => 0,
    };
    (r.kind(), depth, r.rid.clone())
}

/// What is valid but unwise in a config: said by `ferry validate`, not an
/// error.
pub fn warnings(cfg: &ServiceConfig) -> Vec<String> {
    let mut out = Vec::new();
    let shared = cfg
        .resources
        .iter()
        .any(|r| matches!(r.kind(), Kind::Vg | Kind::Fs));
    if shared && !cfg.resources.iter().any(|r| r.kind() == Kind::Lease) {
        out.push(format!(
            "service '{}' has no [lease#…]: its address probe and VG tag are its only guards \
             against mounting its disks on two nodes at once",
            cfg.name
        ));
    }
    out
}

/// Load and validate a config file from disk.
pub fn load_service(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_service(&file, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            section: None,
            key: None,
            message: format!("cannot read: {e}"),
        }])),
    }
}

/// Node-wide settings from `/etc/ferry/ferry.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name in `nodes`; the hostname when unset.
    pub nodename: Option<String>,
    /// How the frontend reaches each peer: `ssh` (default) or `sudo`.
    pub remote_mode: BTreeMap<String, RemoteMode>,
    pub default_remote_mode: RemoteMode,
    pub ssh_connect_timeout: u32,
    /// This node's sanlock host id (unique in the cluster), for leases.
    pub host_id: Option<u64>,
    /// Other nodes' host ids (`[peer NAME] host_id`), to name a lease holder.
    pub peer_host_ids: BTreeMap<String, u64>,
}

impl NodeConfig {
    /// The node whose host id is `id`, as far as this node's config knows.
    pub fn node_of_host_id(&self, id: u64, this_node: &str) -> Option<String> {
        if self.host_id == Some(id) {
            return Some(this_node.to_string());
        }
        self.peer_host_ids
            .iter()
            .find(|(_, h)| **h == id)
            .map(|(n, _)| n.clone())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemoteMode {
    /// `ssh NODE ferry …`: the peer's helper and polkit decide.
    #[default]
    Ssh,
    /// `ssh NODE sudo -n ferry …` with the shipped sudoers drop-in.
    Sudo,
}

const NODE_SECTION_KEYS: &[&str] = &["nodename", "remote", "ssh_connect_timeout", "host_id"];

pub fn parse_node_config(file: &str, text: &str) -> Result<NodeConfig, ConfigErrors> {
    let mut ck = Checker {
        file,
        pos: scan_positions(text),
        errors: Vec::new(),
    };
    let ini = match ini::Ini::load_from_str_opt(
        text,
        ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        },
    ) {
        Ok(i) => i,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line: e.line + 1,
                section: None,
                key: None,
                message: format!("syntax error: {}", e.msg),
            }]))
        }
    };
    let mut cfg = NodeConfig {
        ssh_connect_timeout: 5,
        ..Default::default()
    };
    for (sec, props) in ini.iter() {
        let Some(sec) = sec else { continue };
        let node = if sec == "node" {
            None
        } else if let Some(peer) = sec.strip_prefix("peer ") {
            // The name is shown as a lease holder's: a node name, like `nodes`.
            let peer = peer.trim();
            if !valid_node_name(peer) {
                ck.err(sec, None, format!("'{peer}' is not a valid node name"));
                continue;
            }
            Some(peer.to_string())
        } else {
            ck.err(sec, None, "unknown section: expected [node] or [peer NAME]");
            continue;
        };
        for (k, v) in props.iter() {
            let v = v.trim();
            match (k, &node) {
                ("nodename", None) if valid_node_name(v) => cfg.nodename = Some(v.to_string()),
                ("nodename", None) => {
                    ck.err(sec, Some(k), format!("'{v}' is not a valid node name"))
                }
                ("ssh_connect_timeout", None) => match v.parse::<u32>() {
                    Ok(n) if (1..=120).contains(&n) => cfg.ssh_connect_timeout = n,
                    _ => ck.err(
                        sec,
                        Some(k),
                        format!("'{v}' is not a number of seconds from 1 to 120"),
                    ),
                },
                ("host_id", _) => match v.parse::<u64>() {
                    Ok(id) if (1..=MAX_HOST_ID).contains(&id) => match &node {
                        None => cfg.host_id = Some(id),
                        Some(n) => {
                            cfg.peer_host_ids.insert(n.clone(), id);
                        }
                    },
                    _ => ck.err(
                        sec,
                        Some(k),
                        format!("'{v}' is not a sanlock host id from 1 to {MAX_HOST_ID}"),
                    ),
                },
                ("remote", _) => {
                    let mode = match v {
                        "ssh" => RemoteMode::Ssh,
                        "sudo" => RemoteMode::Sudo,
                        _ => {
                            ck.err(sec, Some(k), format!("'{v}' is not ssh or sudo"));
                            continue;
                        }
                    };
                    match &node {
                        Some(n) => {
                            cfg.remote_mode.insert(n.clone(), mode);
                        }
                        None => cfg.default_remote_mode = mode,
                    }
                }
                _ => ck.err(
                    sec,
                    Some(k),
                    format!("unknown key (known keys: {})", NODE_SECTION_KEYS.join(", ")),
                ),
            }
        }
    }
    // Two nodes with one host id would take each other's leases.
    let mut ids: BTreeMap<u64, String> = BTreeMap::new();
    if let Some(id) = cfg.host_id {
        ids.insert(id, "[node]".into());
    }
    for (peer, id) in &cfg.peer_host_ids {
        let sec = format!("peer {peer}");
        if let Some(first) = ids.insert(*id, format!("[{sec}]")) {
            ck.err(
                &sec,
                Some("host_id"),
                format!("host id {id} is already the one of {first}: host ids must be unique"),
            );
        }
    }
    if ck.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(ck.errors))
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => parse_node_config(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeConfig {
                ssh_connect_timeout: 5,
                ..Default::default()
            }),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                section: None,
                key: None,
                message: format!("cannot read: {e}"),
            }])),
        }
    }

    /// This node's name: `nodename` from ferry.conf, else the hostname.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.nodename {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    }

    pub fn mode_for(&self, node: &str) -> RemoteMode {
        self.remote_mode
            .get(node)
            .copied()
            .unwrap_or(self.default_remote_mode)
    }
}

/// The directory holding the service configs.
pub fn services_dir() -> PathBuf {
    std::env::var_os("FERRY_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVICES_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "[DEFAULT]
nodes = deb1 deb2
autostart_node = deb1
app = OSVCLAB
service_type = DEV
docker_data_dir = /opt/busybox/appdata
docker_daemon_args = --ip 203.0.113.25

[container#1]
type = docker
run_image = local/busybox:date

[ip#1]
ipdev = lab0
ipname = 203.0.113.25        # an address
netmask = 24

[vg#1]
vgname = vgbusybox
scsireserv = false

[fs#2]
dev = /dev/loop1
mnt = /opt/busybox/appdata
type = ext4

[fs#1]
dev = /dev/loop0
mnt = /opt/busybox
type = ext4
mnt_opt = rw

[sync#i0]
schedule = 03:59-05:59
";

    #[test]
    fn seed_parses_in_start_order() {
        let c = parse_service("/x/busybox.conf", SEED).expect("seed config is valid");
        assert_eq!(c.name, "busybox");
        assert_eq!(c.nodes, vec!["deb1", "deb2"]);
        let rids: Vec<_> = c.resources.iter().map(|r| r.rid.as_str()).collect();
        assert_eq!(rids, ["ip#1", "vg#1", "fs#1", "fs#2", "container#1"]);
        match &c.resource("ip#1").map(|r| &r.config) {
            Some(ResourceConfig::Ip(ip)) => assert_eq!(ip.ipname, "203.0.113.25"),
            other => panic!("ip#1 is {other:?}"),
        }
        assert_eq!(c.docker_daemon_args, vec!["--ip", "203.0.113.25"]);
        assert_eq!(c.sync["sync#i0"].schedule, vec![(3 * 60 + 59, 5 * 60 + 59)]);
    }

    fn errors(text: &str) -> Vec<String> {
        match parse_service("/x/svc.conf", text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn lease_starts_after_the_address_and_before_the_disks() {
        let text = format!("{SEED}\n[lease#1]\ndev = /dev/loop9\nio_timeout = 1\n");
        let c = parse_service("/x/busybox.conf", &text).expect("valid");
        let order: Vec<&str> = c.resources.iter().map(|r| r.rid.as_str()).collect();
        assert_eq!(
            order,
            ["ip#1", "lease#1", "vg#1", "fs#1", "fs#2", "container#1"]
        );
        let Some(ResourceConfig::Lease(l)) = c.resource("lease#1").map(|r| r.config.clone()) else {
            panic!("lease#1 is a lease");
        };
        assert_eq!(
            (l.offset, l.resource_offset(), l.io_timeout),
            (0, 1 << 20, 1)
        );
        assert!(warnings(&c).is_empty());
        let without = parse_service("/x/busybox.conf", SEED).expect("valid");
        assert!(warnings(&without)[0].contains("no [lease#"));
    }

    #[test]
    fn lease_paths_sanlock_cannot_take_are_refused_with_file_and_line() {
        for dev in ["/dev/disk/by-id/a b", "/dev/a:b", "/dev/a\\b", "/dev/a\tb"] {
            let text = format!("{SEED}\n[lease#1]\ndev = {dev}\n");
            let line = text.lines().count();
            let e = errors(&text);
            let want = format!("/x/svc.conf:{line}: [lease#1] dev: '{dev}': a lease path must not");
            assert!(e.iter().any(|e| e.starts_with(&want)), "{dev:?}: {e:?}");
        }
        assert!(errors(&format!(
            "{SEED}\n[lease#1]\ndev = /dev/disk/by-id/wwn-0x5-part1\n"
        ))
        .is_empty());
    }

    #[test]
    fn lease_errors() {
        let text = format!(
            "{SEED}\n[lease#1]\ndev = /dev/loop0\noffset = 1000\n[lease#2]\ndev = /dev/loop8\n"
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|e| e.contains("[lease#1] offset: 1000 is not a multiple of 1 MiB")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.contains("also the device of [fs#1]")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("[lease#2]: a service has at most one lease")),
            "{e:?}"
        );
    }

    #[test]
    fn lockspace_names_fit_sanlock() {
        assert_eq!(LeaseConfig::lockspace("busybox"), "ferry-busybox");
        let long = "a".repeat(64);
        let ls = LeaseConfig::lockspace(&long);
        assert!(ls.len() <= 47, "{ls}");
        assert_ne!(ls, LeaseConfig::lockspace(&format!("{}b", &long[..63])));
    }

    #[test]
    fn host_ids_are_unique_and_in_range() {
        let ok =
            parse_node_config("f", "[node]\nhost_id = 1\n[peer n2]\nhost_id = 2\n").expect("valid");
        assert_eq!(ok.host_id, Some(1));
        assert_eq!(ok.node_of_host_id(2, "n1").as_deref(), Some("n2"));
        assert_eq!(ok.node_of_host_id(1, "n1").as_deref(), Some("n1"));
        let dup = parse_node_config("f", "[node]\nhost_id = 1\n[peer n2]\nhost_id = 1\n");
        assert!(dup.is_err_and(|e| e.to_string().contains("already the one of [node]")));
        assert!(parse_node_config("f", "[node]\nhost_id = 2001\n").is_err());
        assert!(parse_node_config("f", "[node]\nhost_id = 0\n").is_err());
    }

    #[test]
    fn peer_names_are_node_names() {
        // Found by fuzzing (node_config): a peer's name is shown as a lease
        // holder's, so it is held to the rules of a node name.
        for bad in [
            "[peer node\"]\nhost_id = 2\n",
            "[peer a/b]\nhost_id = 2\n",
            "[peer -x]\nremote = ssh\n",
        ] {
            let e = parse_node_config("f", bad).expect_err(bad);
            assert!(e.to_string().contains("is not a valid node name"), "{e}");
        }
        assert!(parse_node_config("f", "[peer node2.lab]\nhost_id = 2\n").is_ok());
    }

    const PODBOX: &str = "[DEFAULT]\nnodes = n1\npodman_data_dir = /srv/podbox/containers\n\
        [fs#1]\ndev = /dev/x\nmnt = /srv/podbox\ntype = ext4\n\
        [container#1]\ntype = podman\nrun_image = local/pod:1\nulimit = nofile=1024:1024 nproc=512\n";

    #[test]
    fn podman_containers() {
        let svc = parse_service("/x/podbox.conf", PODBOX).expect("valid");
        assert_eq!(
            svc.podman_data_dir.as_deref(),
            Some("/srv/podbox/containers")
        );
        assert_eq!(svc.docker_data_dir, None);
        let Some(ResourceConfig::Container(c)) =
            svc.resource("container#1").map(|r| r.config.clone())
        else {
            panic!("no container#1");
        };
        assert_eq!(c.runtime, ContainerRuntime::Podman);
        assert_eq!(c.ulimits, vec!["nofile=1024:1024", "nproc=512"]);
        // docker stays the meaning of a plain seed config
        let seed = parse_service(
            "/x/s.conf",
            "[DEFAULT]\nnodes = n1\n[container#1]\ntype = docker\nrun_image = i\n",
        )
        .expect("valid");
        let Some(ResourceConfig::Container(d)) =
            seed.resource("container#1").map(|r| r.config.clone())
        else {
            panic!("no container#1");
        };
        assert_eq!(d.runtime, ContainerRuntime::Docker);
        assert!(d.ulimits.is_empty());
    }

    #[test]
    fn podman_storage_must_follow_the_service() {
        let no_dir = PODBOX.replace("podman_data_dir = /srv/podbox/containers\n", "");
        let e = errors(&no_dir);
        assert!(
            e.iter().any(|l| l
                .contains("[DEFAULT] podman_data_dir: required by the type = podman container")),
            "{e:?}"
        );
        let outside = PODBOX.replace("/srv/podbox/containers", "/var/lib/containers");
        let e = errors(&outside);
        assert!(
            e.iter().any(|l| l.contains(
                "podman_data_dir: '/var/lib/containers' is not inside any fs mountpoint"
            )),
            "{e:?}"
        );
        let both = PODBOX.replace("[fs#1]", "docker_data_dir = /srv/podbox\n[fs#1]");
        let e = errors(&both);
        assert!(
            e.iter().any(
                |l| l.contains("docker_data_dir: set, but the service has no docker container")
            ),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.contains("overlaps docker_data_dir")),
            "{e:?}"
        );
        let docker = PODBOX.replace("type = podman", "type = docker");
        let e = errors(&docker);
        assert!(
            e.iter().any(|l| l.contains(
                "podman_data_dir: set, but the service has no container of type = podman"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("ulimit: only for type = podman")),
            "{e:?}"
        );
        let e = errors(&PODBOX.replace("type = podman", "type = lxc"));
        assert!(
            e.iter()
                .any(|l| l.contains("'lxc' is not supported (docker or podman)")),
            "{e:?}"
        );
    }

    #[test]
    fn ulimit_values() {
        for ok in ["nofile=1024:1024", "nproc=512", "core=-1", "nofile=-1:-1"] {
            assert!(check_ulimit(ok).is_ok(), "{ok}");
        }
        for bad in [
            "nofile",
            "=1",
            "nofile=",
            "nofile=1:",
            "NOFILE=1",
            "nofile=1;rm",
            "nofile=1:2:3",
            "--privileged",
            "nofile=a",
        ] {
            assert!(check_ulimit(bad).is_err(), "{bad}");
        }
        let e = errors(&PODBOX.replace("nproc=512", "--privileged"));
        assert!(
            e.iter()
                .any(|l| l.contains("ulimit: '--privileged' is not name=soft[:hard]")),
            "{e:?}"
        );
    }

    #[test]
    fn each_error_names_file_line_section_key() {
        let text = "[DEFAULT]\nnodes = n1\nbogus = 1\n\n[fs#1]\ndev = /dev/loop0\nmnt = opt/x\ntype = ext4\n";
        let e = errors(text);
        assert_eq!(
            e,
            vec![
                "/x/svc.conf:3: [DEFAULT] bogus: unknown key (known keys: nodes, autostart_node, app, service_type, docker_data_dir, docker_daemon_args, podman_data_dir, comment)",
                "/x/svc.conf:7: [fs#1] mnt: 'opt/x' must be an absolute path without '.' or '..'",
            ]
        );
    }

    #[test]
    fn duplicate_rid_and_missing_key() {
        let text =
            "[DEFAULT]\nnodes = n1\n[vg#1]\nvgname = a\n[vg#1]\nvgname = b\n[ip#1]\nipdev = lab0\n";
        let e = errors(text);
        assert!(
            e.contains(
                &"/x/svc.conf:5: [vg#1]: duplicate section (first defined at line 3)".to_string()
            ),
            "{e:?}"
        );
        assert!(
            e.contains(&"/x/svc.conf:7: [ip#1] ipname: missing required key".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn leading_dash_and_data_dir_outside_fs() {
        let text = "[DEFAULT]\nnodes = n1\ndocker_data_dir = /srv/other\n[fs#1]\ndev = -oloop\nmnt = /srv/x\ntype = ext4\n[container#1]\ntype = docker\nrun_image = --privileged\n";
        let e = errors(text);
        assert!(
            e.iter().any(|l| l.starts_with(
                "/x/svc.conf:3: [DEFAULT] docker_data_dir: '/srv/other' is not inside any fs"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("/x/svc.conf:5: [fs#1] dev: '-oloop' starts with '-'")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("/x/svc.conf:10: [container#1] run_image: '--privileged'")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_section_and_reserved_daemon_arg() {
        let text = "[DEFAULT]\nnodes = n1\ndocker_daemon_args = --data-root=/tmp\n[disk#1]\nx = 1\n[weird]\n";
        let e = errors(text);
        assert!(
            e.iter().any(
                |l| l.starts_with("/x/svc.conf:3: [DEFAULT] docker_daemon_args: '--data-root'")
            ),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("/x/svc.conf:4: [disk#1]: unknown section")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("/x/svc.conf:6: [weird]: unknown section")),
            "{e:?}"
        );
    }

    #[test]
    fn reserved_daemon_args_in_every_spelling() {
        for bad in [
            "-Htcp://0.0.0.0:2375",
            "--host=tcp://x",
            "-p/x",
            "--bridge=docker0",
            "--iptables=true",
        ] {
            let text = format!(
                "[DEFAULT]\nnodes = n1\ndocker_daemon_args = {bad}\ndocker_data_dir = /s/d\n[fs#1]\ndev = /dev/x\nmnt = /s\ntype = ext4\n[container#1]\ntype = docker\nrun_image = i\n"
            );
            assert!(
                errors(&text)
                    .iter()
                    .any(|e| e.contains("docker_daemon_args")),
                "{bad} was accepted"
            );
        }
        assert_eq!(reserved_dockerd_arg("--ip"), None);
        assert_eq!(reserved_dockerd_arg("--log-level=debug"), None);
    }

    #[test]
    fn paths_must_be_canonical() {
        for bad in ["/srv/a/", "/srv//a", "/srv/./a", "/srv/../a", "srv/a"] {
            let text =
                format!("[DEFAULT]\nnodes = n1\n[fs#1]\ndev = /dev/x\nmnt = {bad}\ntype = ext4\n");
            assert!(
                errors(&text).iter().any(|e| e.contains("[fs#1] mnt:")),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn schedule_windows() {
        let w = parse_schedule("03:59-05:59").expect("valid");
        assert!(in_schedule(&w, 4 * 60));
        assert!(!in_schedule(&w, 18 * 60));
        let night = parse_schedule("23:00-01:00").expect("valid");
        assert!(in_schedule(&night, 30));
        assert!(!in_schedule(&night, 12 * 60));
        assert!(parse_schedule("25:00-01:00").is_err());
    }

    #[test]
    fn checksum_follows_content_only() {
        let a = parse_service("/a/busybox.conf", SEED).expect("valid");
        let b = parse_service("/b/busybox.conf", SEED).expect("valid");
        assert_eq!(a.checksum(), b.checksum());
        let c =
            parse_service("/a/busybox.conf", &SEED.replace("deb1 deb2", "deb1")).expect("valid");
        assert_ne!(a.checksum(), c.checksum());
    }

    #[test]
    fn node_config() {
        let c = parse_node_config(
            "f",
            "[node]\nnodename = n1\nremote = ssh\n[peer n2]\nremote = sudo\n",
        )
        .expect("valid");
        assert_eq!(c.node_name(), "n1");
        assert_eq!(c.mode_for("n2"), RemoteMode::Sudo);
        assert_eq!(c.mode_for("n3"), RemoteMode::Ssh);
        assert!(parse_node_config("f", "[node]\nremote = telnet\n").is_err());
    }
}
