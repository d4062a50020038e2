//! `ferry validate` on broken configs: each file in tests/configs/bad names
//! the error it must produce (`# expect: …` on its first line); every one
//! must exit 2 with that `FILE:LINE: [section] key: …` line, and none may
//! panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("ferry runs")
}

#[test]
fn bad_configs_give_positioned_errors_and_exit_2() {
    let dir = repo().join("tests/configs/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("bad config dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the set of broken configs, found {}",
        files.len()
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", f.display()));
        let path = f.display().to_string();
        let out = ferry(&["validate", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{path}: exit code; stderr: {stderr}"
        );
        let wanted = format!("{path}{expect}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("ferry: {wanted}")) || l.starts_with(&wanted)),
            "{path}: expected a line starting with '{wanted}', got:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{path} panicked: {stderr}");
    }
}

#[test]
fn good_config_validates() {
    let path = repo().join("tests/configs/good/busybox.conf");
    let out = ferry(&["validate", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (service busybox, 4 resources"),
        "{stdout}"
    );
    // valid, but with nothing but the address and the tag to keep it on
    // one node at a time
    assert!(
        stdout.contains("warning: service 'busybox' has no [lease#…]"),
        "{stdout}"
    );
}

#[test]
fn a_config_with_a_lease_validates_without_warning() {
    let path = repo().join("tests/configs/good-lease/busybox.conf");
    let out = ferry(&["validate", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (service busybox, 5 resources"),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let dir = std::env::temp_dir().join(format!("ferry-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let f = dir.join("multi.conf");
    std::fs::write(
        &f,
        "[DEFAULT]\nnodes = n1\nfoo = 1\n[fs#1]\ndev = /dev/x\nmnt = rel\ntype = ext4\n[bar#1]\n",
    )
    .expect("write");
    let out = ferry(&["validate", &f.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    for needle in [
        ":3: [DEFAULT] foo: unknown key",
        ":6: [fs#1] mnt: 'rel'",
        ":8: [bar#1]: unknown section",
    ] {
        assert!(stderr.contains(needle), "missing '{needle}' in:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
