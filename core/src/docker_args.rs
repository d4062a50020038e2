//! The argument checks of `ferry docker SVC -- ARGS…` (the helper's
//! `Container.Docker`): pure functions on the caller's arguments, here so
//! that the fuzz targets reach the very code the helper runs. The helper
//! maps a refusal to its `InvalidArgument` error.
//!
//! The docker CLI runs as root with the helper's view of the filesystem, so
//! options that make the CLI itself read or write a file by path (`load -i`,
//! `save -o`, `import FILE`) are refused: the caller redirects its own stdin
//! and stdout instead, with its own rights.

use crate::dbus::DOCKER_ALLOWED;

/// The first argument must be an allowed subcommand: no global options
/// (`-H`, `--config`, `--context`…) that would point docker elsewhere.
pub fn check_docker_args(args: &[String]) -> Result<(), String> {
    match args.first() {
        None => Err(format!(
            "no docker subcommand given (allowed: {})",
            DOCKER_ALLOWED.join(", ")
        )),
        Some(sub) if DOCKER_ALLOWED.contains(&sub.as_str()) => Ok(()),
        Some(sub) => Err(format!(
            "docker subcommand '{sub}' is not allowed through ferry (allowed: {})",
            DOCKER_ALLOWED.join(", ")
        )),
    }
}

/// `docker image …` subcommands that act on the daemon only. `image build`
/// would read a build context by path as root, `image push` would talk to a
/// registry.
pub const IMAGE_SUBCOMMANDS: &[&str] = &[
    "ls", "list", "inspect", "history", "pull", "load", "import", "rm", "remove", "prune", "tag",
    "save",
];

/// Options of `docker import` that take a value (so the value is not the
/// source argument).
const IMPORT_VALUE_OPTIONS: &[&str] = &["-c", "--change", "-m", "--message", "--platform"];

fn refused(what: &str) -> String {
    format!(
        "{what}: the docker CLI runs as root on the node, so through ferry it may not open files \
         by path: redirect stdin/stdout instead (e.g. `ferry docker SVC -- load < image.tar`)"
    )
}

/// Refuse the option `-<short>` (also inside a cluster like `-qi` or with
/// an attached value like `-ofile`) and `--<long>[=…]`.
fn refuse_option(args: &[String], short: char, long: &str) -> Result<(), String> {
    for a in args.iter().take_while(|a| a.as_str() != "--") {
        let is_long = a == long || a.starts_with(&format!("{long}="));
        let in_cluster = a.len() > 1
            && !a.starts_with("--")
            && a.strip_prefix('-').is_some_and(|c| c.contains(short));
        if is_long || in_cluster {
            return Err(refused(&format!("'{a}'")));
        }
    }
    Ok(())
}

/// What the allow-list cannot see: arguments that would make the root CLI
/// read or write a file by path, and `image` subcommands beyond the
/// daemon's own business.
pub fn check_file_access(args: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = args.split_first() else {
        return Ok(());
    };
    // `image` is the one command group allowed: its subcommand must come
    // right after it. The CLI skips `--flag=value` tokens while looking for a
    // subcommand (`image --help=false build …` runs `image build`), so no
    // option may stand in between.
    let (sub, rest) = match (sub.as_str(), rest.split_first()) {
        ("image", Some((sub2, rest2))) if IMAGE_SUBCOMMANDS.contains(&sub2.as_str()) => {
            (sub2.as_str(), rest2)
        }
        ("image", other) => {
            return Err(format!(
                "docker image {} is not allowed through ferry: the subcommand must follow `image` \
                 directly (allowed: {})",
                other.map(|(a, _)| a.as_str()).unwrap_or(""),
                IMAGE_SUBCOMMANDS.join(", ")
            ))
        }
        (s, _) => (s, rest),
    };
    match sub {
        "load" => refuse_option(rest, 'i', "--input"),
        "save" => refuse_option(rest, 'o', "--output"),
        "import" => {
            let mut it = rest.iter();
            let mut source = None;
            while let Some(a) = it.next() {
                if a == "--" {
                    source = it.next();
                    break;
                }
                if IMPORT_VALUE_OPTIONS.contains(&a.as_str()) {
                    it.next();
                    continue;
                }
                if a.starts_with('-') && a != "-" {
                    continue;
                }
                source = Some(a);
                break;
            }
            if source.map(String::as_str) == Some("-") {
                Ok(())
            } else {
                Err(refused(
                    "docker import reads only from stdin (`import - NAME < rootfs.tar`)",
                ))
            }
        }
        _ => Ok(()),
    }
}

/// podman's global options. Unlike docker's, they are accepted after the
/// subcommand too (`podman ps --root /elsewhere`), and several name a path
/// or a program that podman, as root, would use (`--conmon`, `--runtime`,
/// `--hooks-dir`…): none may appear anywhere in a passthrough's arguments.
pub const PODMAN_GLOBAL_OPTIONS: &[&str] = &[
    "--cgroup-manager",
    "--conmon",
    "--connection",
    "--events-backend",
    "--hooks-dir",
    "--identity",
    "--log-level",
    "--namespace",
    "--network-cmd-path",
    "--network-config-dir",
    "--noout",
    "--remote",
    "--root",
    "--runroot",
    "--runtime",
    "--runtime-flag",
    "--ssh",
    "--storage-driver",
    "--storage-opt",
    "--syslog",
    "--tmpdir",
    "--url",
    "--volumepath",
    "--module",
    "--trace",
];

/// `pull` options of podman's that read a file or directory by path.
const PODMAN_PULL_FILE_OPTIONS: &[&str] = &["--authfile", "--cert-dir", "--decryption-key"];

/// The checks of [`check_file_access`], plus what podman's CLI adds: global
/// options after the subcommand (`-r`/`--remote` and `-c`/`--connection`
/// among them, except `import -c`, which is `--change` there), and `pull`'s
/// options that read files. The allow-list is docker's.
pub fn check_podman_args(args: &[String]) -> Result<(), String> {
    check_docker_args(args)?;
    check_file_access(args)?;
    let is_import = matches!(
        (
            args.first().map(String::as_str),
            args.get(1).map(String::as_str)
        ),
        (Some("import"), _) | (Some("image"), Some("import"))
    );
    let is_pull = matches!(
        (
            args.first().map(String::as_str),
            args.get(1).map(String::as_str)
        ),
        (Some("pull"), _) | (Some("image"), Some("pull"))
    );
    for a in args.iter().take_while(|a| a.as_str() != "--") {
        let long = a.split_once('=').map(|(o, _)| o).unwrap_or(a);
        if PODMAN_GLOBAL_OPTIONS.contains(&long) {
            return Err(format!(
                "'{a}': podman's global options are ferry's to set for the service (the storage \
                 root, the run root, the runtime): they may not be given through ferry"
            ));
        }
        if is_pull && PODMAN_PULL_FILE_OPTIONS.contains(&long) {
            return Err(refused(&format!("'{a}'")));
        }
        if !a.starts_with("--") && a.len() > 1 {
            if let Some(cluster) = a.strip_prefix('-') {
                let shorts: &[char] = if is_import { &['r'] } else { &['r', 'c'] };
                if cluster
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .any(|c| shorts.contains(&c))
                {
                    return Err(format!(
                        "'{a}': podman's -r (--remote) and -c (--connection) may not be given through ferry"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `podman GLOBAL… ARGS…`: the service's global options first.
pub fn podman_argv(global: &[String], args: &[String]) -> Vec<String> {
    global.iter().chain(args.iter()).cloned().collect()
}

/// `docker -H unix://<sock> ARGS…`, as the log shows it.
pub fn docker_argv(host: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-H".to_string(), host.to_string()];
    v.extend(args.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subcommand_must_be_allowed() {
        assert!(check_docker_args(&v(&["ps", "-a"])).is_ok());
        assert!(check_docker_args(&v(&[])).is_err());
        assert!(check_docker_args(&v(&["-H", "tcp://x", "ps"])).is_err());
        assert!(check_docker_args(&v(&["--config", "/tmp", "ps"])).is_err());
        assert!(check_docker_args(&v(&["run", "busybox"])).is_err());
        assert!(check_docker_args(&v(&["cp", "x:/etc/shadow", "/tmp"])).is_err());
    }

    #[test]
    fn image_subcommand_must_follow_directly() {
        for bad in [
            &[
                "image",
                "--help=false",
                "build",
                "-f",
                "/etc/passwd",
                "/etc",
            ][..],
            &["image", "--help=false", "save", "-o", "/root/x", "img"],
            &["image", "-q", "ls"],
            &["image", "build", "/"],
            &["image", "push", "img"],
            &["image"],
        ] {
            assert!(check_file_access(&v(bad)).is_err(), "{bad:?} passed");
        }
        assert!(check_file_access(&v(&["image", "ls", "-q"])).is_ok());
    }

    #[test]
    fn file_options_are_refused() {
        assert!(check_file_access(&v(&["ps", "-a"])).is_ok());
        assert!(check_file_access(&v(&["load"])).is_ok());
        assert!(check_file_access(&v(&["logs", "--tail", "5", "busybox.container.1"])).is_ok());
        assert!(check_file_access(&v(&["load", "-i", "/etc/shadow"])).is_err());
        assert!(check_file_access(&v(&["load", "--input=/etc/shadow"])).is_err());
        assert!(check_file_access(&v(&["image", "save", "-o", "/etc/x", "img"])).is_err());
        assert!(check_file_access(&v(&["image", "save", "-o/etc/x", "img"])).is_err());
        assert!(check_file_access(&v(&["image", "save", "img"])).is_ok());
        assert!(check_file_access(&v(&["load", "-qi", "/etc/shadow"])).is_err());
        assert!(check_file_access(&v(&["image", "load", "-q"])).is_ok());
        assert!(check_file_access(&v(&["attach", "--no-stdin", "x"])).is_ok());
        // Only save and load have these options: top's ps options pass.
        assert!(check_file_access(&v(&["top", "x", "-o", "pid"])).is_ok());
        assert!(check_file_access(&v(&["image", "build", "/"])).is_err());
        assert!(check_file_access(&v(&["image", "push", "x"])).is_err());
        assert!(check_file_access(&v(&["image", "ls"])).is_ok());
        // nothing may stand between `image` and its subcommand, --help included
        assert!(check_file_access(&v(&["image", "--help"])).is_err());
    }

    #[test]
    fn import_reads_stdin_only() {
        let ok = v(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            "-",
            "local/busybox:date",
        ]);
        assert!(check_file_access(&ok).is_ok());
        assert!(check_file_access(&v(&["image", "import", "-m", "x", "-", "n"])).is_ok());
        assert!(check_file_access(&v(&["import", "/etc/shadow", "n"])).is_err());
        assert!(check_file_access(&v(&["import", "http://203.0.113.9/x.tar"])).is_err());
        assert!(check_file_access(&v(&["import"])).is_err());
        assert!(check_file_access(&v(&["image", "import", "/root/x.tar"])).is_err());
    }

    #[test]
    fn podman_refusals() {
        // docker's rules hold
        assert!(check_podman_args(&v(&["run", "x"])).is_err());
        assert!(check_podman_args(&v(&["load", "-i", "/etc/shadow"])).is_err());
        assert!(check_podman_args(&v(&["import", "/etc/shadow", "n"])).is_err());
        // global options anywhere
        for bad in [
            &["ps", "--root", "/elsewhere"][..],
            &["ps", "--root=/elsewhere"],
            &["images", "--conmon", "/tmp/x"],
            &["logs", "--runtime=/tmp/evil", "x"],
            &["ps", "-r"],
            &["ps", "-ar"],
            &["inspect", "-c", "other", "x"],
            &["image", "ls", "--url", "tcp://203.0.113.9:1"],
            &["pull", "--authfile", "/root/auth.json", "img"],
            &["image", "pull", "--cert-dir=/root", "img"],
            &["import", "-r", "-", "n"],
        ] {
            assert!(check_podman_args(&v(bad)).is_err(), "{bad:?} passed");
        }
        for ok in [
            &["ps", "-a"][..],
            &["import", "-c", "CMD [\"/bin/sh\"]", "-", "local/pod:1"],
            &["image", "inspect", "--format", "{{.Id}}", "local/pod:1"],
            &["logs", "--tail", "5", "podbox.container.1"],
            &["pull", "--creds", "u:p", "img"],
            // after `--` nothing is an option
            &["inspect", "--", "--root"],
        ] {
            assert!(check_podman_args(&v(ok)).is_ok(), "{ok:?} refused");
        }
        assert_eq!(
            podman_argv(&v(&["--root", "/r"]), &v(&["ps"])),
            v(&["--root", "/r", "ps"])
        );
    }

    #[test]
    fn argv() {
        assert_eq!(
            docker_argv("unix:///var/lib/ferry/b/docker.sock", &v(&["ps", "-a"])),
            v(&["-H", "unix:///var/lib/ferry/b/docker.sock", "ps", "-a"])
        );
    }
}
