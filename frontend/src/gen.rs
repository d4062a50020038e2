//! `ferry __generate DIR`: renders the man pages and shell completions from
//! the clap definitions at package build time (`make deb`), so they never
//! drift from the commands and no generated output lives in git. Hidden and
//! handled before argument parsing: it is a build step, not an operator's
//! command, and it leaves the command enum alone.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use ferry_core::helper_cli::HelperArgs;

const VERB: &str = "__generate";

/// The output directory when ferry was run as `ferry __generate DIR`.
pub fn requested() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != VERB {
        return None;
    }
    // A missing DIR means "here": a build step should not silently do nothing.
    Some(args.next().map(PathBuf::from).unwrap_or_else(|| ".".into()))
}

/// What generation cannot know from clap, appended to ferry(1).
const FERRY_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
ok
.TP
\fB1\fR
an action failed; what was done is rolled back, and the message says where things stand
.TP
\fB2\fR
bad input: config errors, unknown service, rid or node
.TP
\fB3\fR
not authorized; the message names the polkit action
.TP
\fB4\fR
the helper is not running
.TP
\fB5\fR
a peer did not answer
.SH FILES
.TP
\fI/etc/ferry/services/SERVICE.conf\fR
one service config per file, see \fBferry.conf\fR(5)
.TP
\fI/etc/ferry/ferry.conf\fR
this node's settings: its name, how peers are reached (ssh or sudo)
.SH ENVIRONMENT
.TP
\fBFERRY_LOG\fR
log filter of the frontend (default \fIwarn\fR)
.TP
\fBFERRY_NODE_CONFIG\fR
another node config than \fI/etc/ferry/ferry.conf\fR
.SH NOTES
Every action holds the service's lock on its node, kept by the helper for
ferry's bus connection; a second action fails at once, or waits
\fB\-\-waitlock\fR seconds.
.PP
Everything privileged is a call to this node's \fBferry-helper\fR(8) on the
D-Bus system bus, which asks polkit. The package ships example rules under
\fI/usr/share/doc/ferry/examples/\fR: copy \fI50-ferry-operators.rules\fR to
\fI/etc/polkit-1/rules.d/\fR to let the group \fBferry-operators\fR operate.
.SH "SEE ALSO"
\fBferry.conf\fR(5), \fBferry-helper\fR(8), \fBpolkit\fR(8), \fBjournalctl\fR(1)
"#;

/// Appended to ferry-helper(8).
const HELPER_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/ferry/services/*.conf\fR
the service configs; only regular files owned by root that group and others cannot write are loaded
.TP
\fI/usr/share/polkit-1/actions/io.ferry.policy\fR
one polkit action per mutating method
.TP
\fI/usr/share/dbus-1/system.d/io.ferry.Helper1.conf\fR
the bus policy: only root owns the name
.TP
\fI/usr/share/dbus-1/interfaces/io.ferry.Helper1.*.xml\fR
the D-Bus interfaces the helper exports
.SH "SEE ALSO"
\fBferry\fR(1), \fBferry.conf\fR(5), \fBpolkit\fR(8), \fBsystemd.exec\fR(5)
"#;

fn man_page(man: clap_mangen::Man, extra: &str, path: &Path) -> std::io::Result<()> {
    let mut out = Vec::new();
    man.render(&mut out)?;
    out.write_all(extra.as_bytes())?;
    fs::write(path, out)
}

fn generate(ferry: clap::Command, dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    // One page per visible subcommand (ferry-status.1, …), then ferry.1 again
    // with the sections generation cannot write.
    clap_mangen::generate_to(ferry.clone(), &man)?;
    man_page(
        clap_mangen::Man::new(ferry.clone()),
        FERRY_EXTRA,
        &man.join("ferry.1"),
    )?;
    man_page(
        clap_mangen::Man::new(HelperArgs::command()).section("8"),
        HELPER_EXTRA,
        &man.join("ferry-helper.8"),
    )?;

    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = ferry.clone();
        clap_complete::generate_to(shell, &mut cmd, "ferry", &completions)?;
    }
    Ok(())
}

pub fn run(ferry: clap::Command, dir: &Path) -> ExitCode {
    match generate(ferry, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry {VERB}: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
