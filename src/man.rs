//! The man page `migrun(1)`, generated from the clap definitions plus the sections clap cannot know; it must not touch the system.
//!
//! clap_mangen alone gives a SYNOPSIS without the launcher form (migrun's main use has no
//! subcommand word), points at per-subcommand pages that nobody installs (`migrun-run(1)`) and
//! files the examples under `EXTRA`. So the flags come from clap (they cannot drift from
//! `--help`), and the page is laid out here: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, LAUNCHER
//! OPTIONS, COMMANDS, EXAMPLES, EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO.

use crate::cli::{Cli, LAUNCHER_SYNOPSIS};
use clap::CommandFactory;
use roff::{bold, italic, roman, Inline, Roff};
use std::io::Write;

/// Pages SEE ALSO names: each is installed by a package a migrun host has (docker.io, podman,
/// runc, the NVIDIA driver), never a page of migrun's own that does not exist.
const SEE_ALSO: &[(&str, &str)] = &[
    ("docker-run", "1"),
    ("podman-run", "1"),
    ("runc", "8"),
    ("nvidia-smi", "1"),
];

const EXAMPLES: &[(&str, &str)] = &[
    (
        "migrun --profile 3g.40gb -it --rm nvcr.io/nvidia/pytorch:24.05-py3 python",
        "Run a container on a 3g.40gb slice; the slice is released when it exits.",
    ),
    (
        "migrun --min-mem 20g --wait=300 -d -p 8888:8888 jupyter/base-notebook",
        "The smallest profile with 20 GB, waiting up to 5 minutes for room; detached, released when the container stops.",
    ),
    (
        "migrun --profile 1g.10gb --dry-run busybox true",
        "Show the plan and the exact docker command; change nothing.",
    ),
    (
        "migrun alloc --profile 3g.40gb --json",
        "Allocate for the Slurm plugin or a JupyterHub spawner; give it back with migrun release.",
    ),
    (
        "migrun --simulate h100-80gb:8 status",
        "Try it without a GPU: eight simulated H100s.",
    ),
    (
        "migrun teardown --all --force",
        "Destroy every unleased instance migrun created, after releasing leases whose holder is gone.",
    ),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "The operation failed (driver, engine or I/O error)."),
    ("2", "Bad input or usage, or a request the config's policy refuses; the message names what to change."),
    ("3", "No room for the profile now (retry, or use --wait)."),
    ("4", "Needs privilege migrun does not have (not root, NVML NO_PERMISSION, another user's lease)."),
    ("141", "Standard output was closed by its reader (as in migrun status | head -1); nothing is printed."),
    ("other", "The launcher exits with the container's own exit code; docker's own failures keep docker's codes (125, 126, 127)."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("MIGRUN_SIMULATE", "Same as --simulate."),
    ("MIGRUN_STATE_DIR", "Same as --state-dir."),
    ("MIGRUN_CONFIG", "Same as --config."),
    ("MIGRUN_DOCKER", "Same as the launcher's --docker."),
    ("MIGRUN_PROFILE", "For the runtime shim and the hooks: the profile a container asks for (-e MIGRUN_PROFILE=3g.40gb)."),
    ("MIGRUN_LOG", "Log filter for the hooks and the shim (tracing's syntax, e.g. debug)."),
    ("DOCKER_HOST", "The docker daemon the launcher talks to, as for docker itself."),
    ("SUDO_UID", "Under sudo, the user a lease is charged to; believed only when the effective uid is 0."),
];

const FILES: &[(&str, &str)] = &[
    ("/etc/migrun/config.toml", "Policy: managed GPUs, allowed profiles, per-user limits, injection (a missing file means built-in defaults)."),
    ("/run/migrun", "State dir on real GPUs: leases, intents, created-instance records, locks, the hooks' log migrun.log."),
    ("/run/migrun-sim/SPEC", "State dir of a simulated machine when --state-dir is not given (root; others use $XDG_RUNTIME_DIR/migrun-sim or /tmp/migrun-UID/sim)."),
    ("/usr/share/containers/oci/hooks.d/00-migrun-*.json", "The podman and CRI-O hooks."),
    ("/usr/bin/migrun-runtime", "The runc-compatible runtime shim (a link to migrun)."),
    ("/var/lib/migrun/ledger.jsonl", "The usage ledger (grants, ends, waits, refusals; rotated to .1, .2, ...) that migrun usage reads; the config's ledger key moves it."),
];

fn section(r: &mut Roff, name: &str) {
    r.control("SH", [name]);
}

fn tagged(r: &mut Roff, tag: Vec<Inline>, text: &str) {
    r.control("TP", []);
    r.text(tag);
    r.text([roman(text)]);
}

/// `--flag VALUE` / `-v, --verbose` for an option, as the tag of its paragraph.
fn flag_tag(a: &clap::Arg) -> Vec<Inline> {
    let mut tag = Vec::new();
    if let Some(s) = a.get_short() {
        tag.push(bold(format!("-{s}")));
        if a.get_long().is_some() {
            tag.push(roman(", "));
        }
    }
    if let Some(l) = a.get_long() {
        tag.push(bold(format!("--{l}")));
    }
    if a.get_action().takes_values() {
        if let Some(v) = a.get_value_names().and_then(|v| v.first()) {
            let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
            tag.push(roman(if optional { "[=" } else { " " }));
            tag.push(italic(v.to_string()));
            if optional {
                tag.push(roman("]"));
            }
        }
    }
    tag
}

/// The plain text of a tag part (for usage lines, which are one bold run).
fn inline_text(i: Inline) -> String {
    match i {
        Inline::Roman(t) | Inline::Bold(t) | Inline::Italic(t) => t,
        Inline::LineBreak => String::new(),
    }
}

fn help_of(a: &clap::Arg) -> String {
    a.get_help().map(|h| h.to_string()).unwrap_or_default()
}

/// Options of one command, without clap's own help/version flags and positionals.
fn options(cmd: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    cmd.get_arguments().filter(|a| {
        !a.is_positional()
            && !a.is_hide_set()
            && !a.is_global_set()
            && !matches!(a.get_id().as_str(), "help" | "version")
    })
}

/// One usage line for a leaf command: `migrun profiles [--gpu N] [--json]`.
pub fn usage_line(path: &str, cmd: &clap::Command) -> String {
    let mut words = vec![format!("migrun {path}")];
    for a in options(cmd) {
        let w: String = flag_tag(a).into_iter().map(inline_text).collect();
        words.push(if a.is_required_set() {
            w
        } else {
            format!("[{w}]")
        });
    }
    for a in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let name = a
            .get_value_names()
            .and_then(|v| v.first())
            .map_or(a.get_id().to_string(), |v| v.to_string());
        words.push(if a.is_required_set() {
            name
        } else {
            format!("[{name}]")
        });
    }
    words.join(" ")
}

/// Leaf commands in help order, with their path (`mig enable`) and about.
fn leaves(cmd: &clap::Command) -> Vec<(String, &clap::Command)> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        if sub.has_subcommands() {
            for leaf in sub.get_subcommands().filter(|c| c.get_name() != "help") {
                out.push((format!("{} {}", sub.get_name(), leaf.get_name()), leaf));
            }
        } else {
            out.push((sub.get_name().to_string(), sub));
        }
    }
    out
}

/// Render the whole page as roff.
pub fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    // Deferred subcommands get their flags only when built (see `cli::Command`).
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;

    let mut r = Roff::new();
    section(&mut r, "SYNOPSIS");
    for (i, line) in LAUNCHER_SYNOPSIS.lines().enumerate() {
        if i > 0 {
            r.text([roman("")]).control("br", []);
        }
        r.text([bold("migrun"), roman(line.trim_start_matches("migrun"))]);
    }
    r.control("br", []);
    r.text([
        bold("migrun"),
        roman(" [GLOBAL OPTIONS] "),
        italic("COMMAND"),
        roman(" [ARGS]"),
    ]);
    r.to_writer(w)?;
    man.render_description_section(w)?;

    let mut r = Roff::new();
    section(&mut r, "GLOBAL OPTIONS");
    r.text([roman(
        "Every command takes these, before or after the command word.",
    )]);
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        tagged(&mut r, flag_tag(a), &help_of(a));
    }
    section(&mut r, "LAUNCHER OPTIONS");
    r.text([roman(
        "migrun's own flags come first; the first word that is not one of them starts docker run's options, \
         which pass through unchanged. Write migrun run ... for an image named like a command.",
    )]);
    if let Some(run) = cmd.find_subcommand("run") {
        for a in options(run) {
            tagged(&mut r, flag_tag(a), &help_of(a));
        }
    }
    section(&mut r, "COMMANDS");
    for (path, leaf) in leaves(&cmd) {
        let about = leaf.get_about().map(|a| a.to_string()).unwrap_or_default();
        tagged(&mut r, vec![bold(usage_line(&path, leaf))], &about);
    }
    section(&mut r, "EXAMPLES");
    for (command, what) in EXAMPLES {
        tagged(&mut r, vec![bold(*command)], what);
    }
    section(&mut r, "EXIT STATUS");
    for (code, what) in EXIT_STATUS {
        tagged(&mut r, vec![bold(*code)], what);
    }
    section(&mut r, "ENVIRONMENT");
    for (name, what) in ENVIRONMENT {
        tagged(&mut r, vec![bold(*name)], what);
    }
    section(&mut r, "FILES");
    for (path, what) in FILES {
        tagged(&mut r, vec![italic(*path)], what);
    }
    section(&mut r, "SEE ALSO");
    let mut refs = Vec::new();
    for (i, (page, sec)) in SEE_ALSO.iter().enumerate() {
        if i > 0 {
            refs.push(roman(", "));
        }
        refs.push(bold(*page));
        refs.push(roman(format!("({sec})")));
    }
    refs.push(roman(
        ". migrun's documentation: /usr/share/doc/migrun and the docs/ folder of its repository.",
    ));
    r.text(refs);
    r.to_writer(w)?;
    man.render_version_section(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        let mut buf = Vec::new();
        render(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_page_has_every_section_and_no_missing_pages() {
        let p = page();
        for s in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "GLOBAL OPTIONS",
            "LAUNCHER OPTIONS",
            "COMMANDS",
            "EXAMPLES",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(
                p.contains(&format!(".SH \"{s}\"")) || p.contains(&format!(".SH {s}")),
                "{s}"
            );
        }
        assert!(!p.contains("migrun\\-run(1)") && !p.contains("migrun-run(1)"));
        assert!(!p.contains("EXTRA"));
    }

    #[test]
    fn every_flag_of_every_command_is_on_the_page() {
        let p = page().replace("\\-", "-");
        let mut cmd = Cli::command();
        cmd.build();
        let mut all: Vec<&clap::Command> = vec![&cmd];
        all.extend(leaves(&cmd).into_iter().map(|(_, c)| c));
        for c in all {
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(l) = a.get_long() {
                    assert!(p.contains(&format!("--{l}")), "--{l} of {}", c.get_name());
                }
            }
        }
    }
}
