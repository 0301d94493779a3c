//! What a newcomer meets first: read-only commands leave no trace, a second simulated model just works, and
//! `--help`, the man page and the README agree on every flag. It must not need a GPU or docker.

mod alloc_support;

use alloc_support::BIN;
use clap::CommandFactory;
use std::path::Path;
use std::process::Command;

fn migrun(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MIGRUN_SIMULATE")
        .env_remove("MIGRUN_STATE_DIR")
        .env("MIGRUN_CONFIG", "/dev/null")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = migrun(args);
    assert!(
        o.status.success(),
        "migrun {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Everything under `p`, for "nothing was created" checks.
fn tree(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            out.extend(tree(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_commands_create_no_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let d = dir.to_str().unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["profiles"],
        &["placements", "--json"],
        &[
            "--profile",
            "1g.10gb",
            "--dry-run",
            "--inject",
            "env",
            "busybox",
        ],
    ] {
        let mut full = vec!["--simulate", "h100-80gb:2", "--state-dir", d];
        full.extend_from_slice(args);
        ok(&full);
        assert!(!dir.exists(), "migrun {args:?} created {}", dir.display());
    }
    // Once a state dir exists, looking at it changes nothing in it.
    ok(&[
        "--simulate",
        "h100-80gb:2",
        "--state-dir",
        d,
        "alloc",
        "--profile",
        "3g.40gb",
    ]);
    let before = tree(&dir);
    let sim = std::fs::read(dir.join("sim.json")).unwrap();
    for args in [&["status"][..], &["profiles"], &["placements"]] {
        let mut full = vec!["--simulate", "h100-80gb:2", "--state-dir", d];
        full.extend_from_slice(args);
        let text = ok(&full);
        if args == ["status"] {
            assert!(text.contains("lease 1"), "{text}");
        }
    }
    assert_eq!(tree(&dir), before);
    assert_eq!(std::fs::read(dir.join("sim.json")).unwrap(), sim);
}

#[test]
fn without_a_driver_status_fails_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let o = Command::new(BIN)
        .args(["--state-dir", dir.to_str().unwrap(), "status"])
        .env_remove("MIGRUN_SIMULATE")
        .env("MIGRUN_CONFIG", "/dev/null")
        .env("MIGRUN_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!dir.exists());
}

/// Without `--state-dir`, each simulated spec has a directory of its own, so a second model needs
/// no reset; the same spec written two ways shares one. (Specs no other test uses, and cleaned up.)
#[test]
fn a_second_simulated_model_just_works() {
    let a = "a30-24gb:3";
    let b = "b200-180gb:3";
    let euid = nix::unistd::geteuid().as_raw();
    for spec in [a, b, "b200-180gb:3"] {
        let dir = migrun::commands::default_sim_dir(&spec.parse().unwrap(), euid).unwrap();
        // A run of this test killed half-way may have left its machines behind.
        let _ = std::fs::remove_dir_all(dir);
    }
    let granted = ok(&["--simulate", a, "alloc", "--profile", "1g.6gb"]);
    let lease = granted.split_whitespace().last().unwrap().to_string();
    assert!(granted.contains(&format!("lease {lease}")), "{granted}");
    let other = ok(&["--simulate", b, "profiles"]);
    assert!(other.contains("MIG 1g.23gb"), "{other}");
    // The first machine kept its lease; the second never saw it.
    assert!(ok(&["--simulate", a, "status"]).contains(&format!("lease {lease}")));
    assert!(ok(&["--simulate", b, "status"]).contains("no leases"));
    // `b200-180gb` and `b200-180gb:1` are one spec, so one machine.
    assert_eq!(
        migrun::commands::default_sim_dir(&"b200-180gb".parse().unwrap(), euid).unwrap(),
        migrun::commands::default_sim_dir(&"b200-180gb:1".parse().unwrap(), euid).unwrap()
    );
    let released = ok(&["--simulate", a, "release", &lease]);
    assert!(released.contains("released"), "{released}");
    for spec in [a, b] {
        ok(&["--simulate", spec, "sim", "reset"]);
    }
}

/// Every long flag of every command clap knows, for the agreement checks below.
fn every_long_flag() -> Vec<String> {
    let mut cmd = migrun::cli::Cli::command();
    cmd.build();
    let mut flags = Vec::new();
    let mut stack = vec![&cmd];
    while let Some(c) = stack.pop() {
        if c.is_hide_set() {
            continue;
        }
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(l) = a.get_long() {
                if !matches!(l, "help" | "version") {
                    flags.push(format!("--{l}"));
                }
            }
        }
        stack.extend(c.get_subcommands());
    }
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn help_man_page_and_readme_agree_on_every_flag() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let man = ok(&["man"]).replace("\\-", "-");
    let help = ok(&["--help"]);
    let run_help = ok(&["run", "--help"]);
    // One launcher synopsis, word for word, in all three.
    let synopsis = migrun::cli::LAUNCHER_SYNOPSIS;
    assert!(
        help.contains(synopsis),
        "--help lacks the synopsis:\n{help}"
    );
    assert!(readme.contains(synopsis), "README lacks: {synopsis}");
    let man_flat = man.split_whitespace().collect::<Vec<_>>().join(" ");
    for w in synopsis.split_whitespace().filter(|w| w.starts_with("[--")) {
        assert!(man_flat.contains(w), "man SYNOPSIS lacks {w}");
    }
    for flag in every_long_flag() {
        assert!(man.contains(&flag), "the man page lacks {flag}");
        assert!(readme.contains(&flag), "README lacks {flag}");
    }
    for flag in [
        "--profile",
        "--min-mem",
        "--gpu",
        "--wait",
        "--keep",
        "--inject",
        "--dry-run",
        "--docker",
    ] {
        assert!(run_help.contains(flag), "run --help lacks {flag}");
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
