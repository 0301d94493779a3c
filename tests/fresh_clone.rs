//! First contact, proven in the suite: `git clone` of HEAD into an empty folder passes the real-capture comparisons, no file in the repository refers to paths outside it (with a test that this check catches a planted line), and the README's Prerequisites line matches the setup script and Cargo.toml.
//!
//! Both exist because the capture comparisons once read the project's shared folder beside the checkout: they
//! passed on the machine they were written on and failed for anyone who cloned the repository.
//! Neither test ever skips: a missing `git` or `cargo` is a failure, since then nothing was proven.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Run `cmd`, panicking with a clear message when the program cannot be started at all (a host
/// without git or cargo must fail this test, not pass it silently).
fn output_of(cmd: &mut Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {what} ({:?}): {e}; this test needs git and cargo on PATH",
            cmd.get_program()
        )
    })
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = output_of(Command::new("git").arg("-C").arg(dir).args(args), "git");
    assert!(
        out.status.success(),
        "git -C {} {} failed:\n{}",
        dir.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("git prints UTF-8 here")
}

/// The last `n` lines of a command's output, for a failure message that stays readable.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Clone HEAD into `<tmp>/empty-parent/migrun`, build there and run the tests that compare against
/// the real H100 capture. Anything the repository forgot to track, or any read outside the
/// checkout, fails here (the clone has no sibling folders to find by accident).
#[test]
fn a_fresh_clone_passes_the_real_capture_comparisons() {
    let repo = Path::new(REPO);
    let head = git(repo, &["rev-parse", "HEAD"]).trim().to_string();
    // With uncommitted changes the clone still gets HEAD, on purpose: what is proven is what a
    // person cloning the repository gets, and that excludes edits not yet committed. Say so, so a
    // passing run is not mistaken for a check of the working tree.
    let dirty = git(repo, &["status", "--porcelain", "--untracked-files=no"]);
    if !dirty.trim().is_empty() {
        eprintln!(
            "fresh_clone: the checkout has uncommitted changes; testing HEAD {head} without them"
        );
    }

    let tmp = tempfile::Builder::new()
        .prefix("migrun-fresh-clone")
        .tempdir()
        .expect("temp dir for the clone");
    let parent = tmp.path().join("empty-parent");
    std::fs::create_dir(&parent).unwrap();
    let clone = parent.join("migrun");
    let out = output_of(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(repo)
            .arg(&clone),
        "git clone",
    );
    assert!(
        out.status.success(),
        "git clone {REPO} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A clone checks out the source's HEAD; pin the exact commit anyway (a detached or moved HEAD
    // in the source must not change what is tested).
    git(&clone, &["checkout", "--quiet", "--detach", &head]);
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["migrun"], "the clone must have nothing beside it");

    // Dependencies are compiled once per machine into a kept target dir; cargo hashes workspace
    // members by their path relative to the workspace, so a new clone path rebuilds migrun in place
    // instead of piling up copies. Not the outer target dir: the `cargo test` running this test
    // holds its lock.
    let target = repo.join("target/fresh-clone");
    seed_from_outer_build(repo, &target);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = output_of(
        Command::new(&cargo)
            .current_dir(&clone)
            .env("CARGO_TARGET_DIR", &target)
            .args(["test", "--test", "cli_sim", "--test", "nvml_fake"])
            .args(["--", "--test-threads=2"]),
        "cargo test in the clone",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo test --test cli_sim --test nvml_fake failed in a fresh clone of HEAD {head} at {}\n\
         (target dir {}):\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
        clone.display(),
        target.display(),
        tail(&stdout, 40),
        tail(&stderr, 40)
    );
    // A green run that filtered out or renamed the comparisons would prove nothing.
    for name in [
        "placements_match_the_real_lgipp_capture",
        "profiles_json_matches_the_real_h100_capture_field_by_field",
        "h100_through_nvml_equals_the_real_capture",
    ] {
        assert!(
            stdout.contains(&format!("test {name} ... ok")),
            "{name} did not run and pass in the clone:\n{}",
            tail(&stdout, 40)
        );
    }
}

/// On a machine's first run, hard-link the outer build's compiled dependencies into the clone's
/// target dir: cargo fingerprints a registry crate by its source and flags, not by the target dir,
/// so they are reused and only the workspace's own crates build again. The CDI crate's dependency
/// tree (a C build among it) would otherwise compile twice per fresh machine. Best effort: when
/// linking fails, cargo simply builds everything.
fn seed_from_outer_build(repo: &Path, target: &Path) {
    let outer = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("debug");
    let seeded = target.join("debug");
    if seeded.exists() || !outer.is_dir() {
        return;
    }
    let _ = std::fs::create_dir_all(&seeded);
    // Cargo writes this only into a target dir it creates itself; the harness finds the target
    // dir's root by it (tests/common/fake_nvml.rs).
    let _ = std::fs::copy(
        outer.with_file_name("CACHEDIR.TAG"),
        target.join("CACHEDIR.TAG"),
    );
    for part in ["deps", "build", ".fingerprint"] {
        let _ = Command::new("cp")
            .arg("-al")
            .arg(outer.join(part))
            .arg(&seeded)
            .status();
    }
}

/// Strings that point outside the checkout: the project's shared folder beside the checkouts, as a
/// relative path or its fixtures folder joined onto some ancestor. Spelled in pieces, so this file
/// never names the folder itself.
const OUTSIDE: &[&str] = &[
    concat!("..", "/", "shared"),
    concat!("shared", "/", "fixtures"),
];
/// The absolute folder the project's machines keep checkouts in; only where a path starts there
/// (`/tmp/work/x` or a container path like `$PWD:/work/x` are not it).
const MACHINE_ROOT: &str = "/work/";
/// Files the check leaves alone, and why.
const EXEMPT: &[&str] = &[
    // Provenance prose may name where a capture originally came from (never as a command).
    "tests/fixtures/README.md",
    // This file: it spells the patterns and plants bad lines to test the check.
    "tests/fresh_clone.rs",
];

/// Every `path:line: text` of `text` that refers outside the checkout.
fn outside_refs(path: &str, text: &str) -> Vec<String> {
    if EXEMPT.contains(&path) {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let rooted = line.match_indices(MACHINE_ROOT).any(|(at, _)| {
            // Only where a path starts: after the line start, blank, quote, `=`, `(`, `[`, `{`, `,`.
            at == 0
                || matches!(
                    line.as_bytes()[at - 1],
                    b' ' | b'\t' | b'"' | b'\'' | b'`' | b'=' | b'(' | b'[' | b'{' | b','
                )
        });
        if rooted || OUTSIDE.iter().any(|p| line.contains(p)) {
            found.push(format!("{path}:{}: {}", i + 1, line.trim()));
        }
    }
    found
}

/// Scan every file git would put in a commit (tracked, plus untracked files not ignored, so a new
/// script is caught before it is added), as it is on disk now. Binary files are skipped.
fn scan_repo(dir: &Path) -> Vec<String> {
    let list = git(
        dir,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    );
    let mut found = Vec::new();
    for rel in list.split('\0').filter(|s| !s.is_empty()) {
        let path: PathBuf = dir.join(rel);
        // A tracked file deleted in the working tree, or a non-UTF-8 (binary) file: nothing to read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        found.extend(outside_refs(rel, &text));
    }
    found
}

#[test]
fn no_file_in_the_repository_refers_outside_it() {
    let found = scan_repo(Path::new(REPO));
    assert!(
        found.is_empty(),
        "these lines refer to paths outside the repository; a fresh clone has nothing there \
         (keep what they need under the checkout, e.g. tests/fixtures/):\n{}",
        found.join("\n")
    );
}

/// The check above is only worth something if it fails: plant bad lines in a throw-away git
/// repository and see each one reported, while look-alikes that stay inside are not.
#[test]
fn the_outside_path_check_catches_a_planted_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    git(dir, &["init", "--quiet"]);
    let bad = [
        (
            "tests/planted.rs",
            format!(
                "let p = Path::new(\"{}/fixtures/h100-80gb-hbm3\");\n",
                OUTSIDE[0]
            ),
        ),
        (
            "tests/ancestors.rs",
            ".map(|a| a.join(\"shared/fixtures/h100-80gb-hbm3\"))\n".to_string(),
        ),
        (
            "scripts/planted.sh",
            "#!/bin/sh\ncat /work/shared/MIG-FACTS.md\n".to_string(),
        ),
        ("untracked-new.sh", format!("cp {}/x .\n", OUTSIDE[0])),
    ];
    let good = [
        (
            "tests/fine.rs",
            "Path::new(env!(\"CARGO_MANIFEST_DIR\")).join(\"tests/fixtures/h100-80gb-hbm3\")\n",
        ),
        (
            "docs/fine.md",
            "docker run -v \"$PWD:/work/x\" img\ncargo fuzz run t /tmp/work/corpus\n",
        ),
    ];
    let bad_refs: Vec<(&str, &str)> = bad.iter().map(|(r, t)| (*r, t.as_str())).collect();
    for (rel, text) in bad_refs.iter().chain(good.iter()) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    // Track all but one: the untracked file must be found too.
    git(dir, &["add", "tests", "scripts", "docs"]);

    let found = scan_repo(dir);
    for (rel, _) in &bad {
        assert!(
            found.iter().any(|f| f.starts_with(&format!("{rel}:"))),
            "the planted line in {rel} was not reported; found: {found:#?}"
        );
    }
    assert_eq!(found.len(), bad.len(), "look-alikes reported: {found:#?}");
    assert!(
        found.contains(&"scripts/planted.sh:2: cat /work/shared/MIG-FACTS.md".to_string()),
        "reports say file:line: text; found: {found:#?}"
    );
    // Provenance prose in the fixtures README is allowed to name the original place.
    assert!(outside_refs(
        "tests/fixtures/README.md",
        &format!("from {}\n", OUTSIDE[0])
    )
    .is_empty());
}

/// README.md's Prerequisites line and the one scripts/setup-test-host.sh stops with are the same
/// words, and both name Cargo.toml's rust-version: a bump of rust-version that forgets the README
/// fails here instead of misleading the next person who sets up a machine.
#[test]
fn readme_prerequisites_match_the_setup_script_and_cargo_toml() {
    let read = |rel: &str| {
        std::fs::read_to_string(Path::new(REPO).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let manifest = read("Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("Cargo.toml has rust-version = \"X.Y\"");

    // The script's line: `prereq="..."` with `$need` for the version and shell escapes.
    let script = read("scripts/setup-test-host.sh");
    let from_script = script
        .lines()
        .find_map(|l| l.strip_prefix("prereq=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("scripts/setup-test-host.sh sets prereq=\"...\"")
        .replace("$need", version)
        .replace("\\\"", "\"")
        .replace("\\$", "$");

    // The README's line, as rendered text: no bold, no code spans, links as their text.
    let readme = read("README.md");
    let from_readme = readme
        .lines()
        .find(|l| l.starts_with("**Prerequisites:**"))
        .expect("README.md has a line starting with **Prerequisites:**")
        .replace("**", "")
        .replace('`', "")
        .replace("[rustup.rs](https://rustup.rs)", "rustup.rs");

    assert_eq!(from_readme, from_script);
    assert!(
        from_readme.contains(&format!("Rust {version} or newer")),
        "{from_readme}"
    );
}
