//! Writes the seed inputs that are not plain files of the repo into
//! `fuzz/seeds/<target>/`: docker argument lists for `passthrough_args`, and
//! one D-Bus message per helper method (both byte orders) for `dbus_method`.
//! `fuzz/seed.sh` adds the repo's config fixtures and minimizes everything
//! into `fuzz/corpus/`.
//!
//! Run: `cargo run --example gen_seeds` (in fuzz/).

use std::path::Path;

use ferry_core::dbus::{resource_path, service_path, ROOT_PATH};
use zbus::message::Message;
use zbus::wire::Endian;
use zbus::OwnedFd;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn fd() -> OwnedFd {
    let f = std::fs::File::open("/dev/null").expect("/dev/null");
    OwnedFd::from(std::os::fd::OwnedFd::from(f))
}

const ARGS: &[&[&str]] = &[
    &["ps", "-a"],
    &["images"],
    &["image", "ls", "-q"],
    &["image", "save", "img"],
    &["image", "save", "-o", "/etc/x", "img"],
    &[
        "image",
        "--help=false",
        "build",
        "-f",
        "/etc/passwd",
        "/etc",
    ],
    &["load"],
    &["load", "-qi", "/etc/shadow"],
    &["load", "--input=/etc/shadow"],
    &["load", "--", "-i"],
    &[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        "-",
        "local/busybox:date",
    ],
    &["image", "import", "-m", "x", "-", "n"],
    &["import", "/etc/shadow", "n"],
    &["logs", "--tail", "5", "busybox.container.1"],
    &["top", "x", "-o", "pid"],
    &["attach", "--no-stdin", "x"],
    &["-H", "tcp://203.0.113.9:2375", "ps"],
    &["run", "--privileged", "-v", "/:/host", "busybox"],
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    for (i, a) in ARGS.iter().enumerate() {
        write(
            &root.join("passthrough_args"),
            &format!("args-{i}"),
            a.join("\0").as_bytes(),
        );
    }

    let svc = service_path("busybox");
    let rid = |r: &str| resource_path("busybox", r);
    let lab_conf = include_str!("../../tests/lab/busybox.conf");
    let dir = root.join("dbus_method");
    for endian in [Endian::Little, Endian::Big] {
        let e = if endian == Endian::Little { "le" } else { "be" };
        let call = |path: &str, iface: &str, member: &str| {
            Message::method_call(path.to_string(), member.to_string())
                .interface(iface.to_string())
                .destination("io.ferry.Helper1")
                .endian(endian)
        };
        let mut msgs: Vec<(String, Message, u8)> = Vec::new();
        let mut no_args = |path: &str, iface: &str, members: &[&str]| {
            for m in members {
                let msg = call(path, iface, m).build(&()).expect("msg");
                msgs.push((format!("{e}-{iface}-{m}"), msg, 0));
            }
        };
        no_args(
            ROOT_PATH,
            "io.ferry.Helper1.Manager",
            &["ListServices", "Reload"],
        );
        no_args(
            &svc,
            "io.ferry.Helper1.Service",
            &["Status", "Config", "Unlock"],
        );
        no_args(
            &rid("ip#1"),
            "io.ferry.Helper1.Ip",
            &["Check", "Add", "Announce", "Remove"],
        );
        no_args(
            &rid("lease#1"),
            "io.ferry.Helper1.Lease",
            &["Check", "Init", "Acquire", "Release"],
        );
        no_args(
            &rid("vg#1"),
            "io.ferry.Helper1.Vg",
            &["Check", "Tag", "Untag", "Activate", "Deactivate", "Release"],
        );
        no_args(
            &rid("fs#1"),
            "io.ferry.Helper1.Fs",
            &["Check", "Mount", "Unmount"],
        );
        no_args(
            &rid("container#1"),
            "io.ferry.Helper1.Container",
            &["Check", "PrepareDaemon", "StartDaemon", "StopDaemon", "Start", "Stop"],
        );
        let m = call(ROOT_PATH, "io.ferry.Helper1.Manager", "InstallConfig")
            .build(&("busybox", lab_conf))
            .expect("msg");
        msgs.push((format!("{e}-InstallConfig"), m, 0));
        let m = call(ROOT_PATH, "io.ferry.Helper1.Manager", "InstallConfig")
            .build(&("../etc", "[DEFAULT]\nnodes = node1\n"))
            .expect("msg");
        msgs.push((format!("{e}-InstallConfig-bad"), m, 0));
        for w in [0u32, 5000, u32::MAX] {
            let m = call(&svc, "io.ferry.Helper1.Service", "Lock")
                .build(&(w,))
                .expect("msg");
            msgs.push((format!("{e}-Lock-{w}"), m, 0));
        }
        for f in [false, true] {
            let m = call(&rid("vg#1"), "io.ferry.Helper1.Vg", "Reserve")
                .build(&(f,))
                .expect("msg");
            msgs.push((format!("{e}-Reserve-{f}"), m, 0));
        }
        for (i, a) in ARGS.iter().enumerate().step_by(3) {
            let args: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            let m = call(&rid("container#1"), "io.ferry.Helper1.Container", "Docker")
                .build(&(args, fd(), fd(), fd()))
                .expect("msg");
            msgs.push((format!("{e}-Docker-{i}"), m, 3));
        }
        let props = "org.freedesktop.DBus.Properties";
        let m = call(&rid("ip#1"), props, "Get")
            .build(&("io.ferry.Helper1.Ip", "Settings"))
            .expect("msg");
        msgs.push((format!("{e}-Get"), m, 0));
        let m = call(&svc, props, "GetAll")
            .build(&("io.ferry.Helper1.Service",))
            .expect("msg");
        msgs.push((format!("{e}-GetAll"), m, 0));
        let m = call(&svc, props, "Set")
            .build(&("io.ferry.Helper1.Service", "Name", zbus::Variant::from("x")))
            .expect("msg");
        msgs.push((format!("{e}-Set"), m, 0));
        for (name, msg, nfds) in msgs {
            // The first byte: how many descriptors came with the message.
            let mut bytes = vec![nfds];
            bytes.extend_from_slice(msg.data());
            write(&dir, &name, &bytes);
        }
    }
}
