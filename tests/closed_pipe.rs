//! Every printing command into a pipe whose reader is gone: the documented exit status (141, as a shell reports
//! for `ls` or `git`), no panic, no backtrace, nothing on stderr. It must not need a GPU or docker.

mod alloc_support;

use alloc_support::{Sim, BIN};
use std::io::Read;
use std::process::{Command, Stdio};

/// 128 + SIGPIPE (docs/bad-inputs.md, README "Exit codes").
const CLOSED_PIPE: i32 = 141;
const TRIES: usize = 20;

/// Every command that prints to stdout, as run on a simulated machine, and its exit status when
/// its reader stays (all 0 but the dry run without a toolkit, which says a real run stops there).
fn printing_commands() -> Vec<(Vec<&'static str>, i32)> {
    let mut table: Vec<(Vec<&'static str>, i32)> = [
        vec!["profiles"],
        vec!["profiles", "--json"],
        vec!["placements"],
        vec!["placements", "--json"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["gc"],
        vec!["gc", "--json"],
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["man"],
        vec!["--help"],
        vec!["help", "status"],
        vec!["--version"],
        vec![
            "--profile",
            "1g.10gb",
            "--dry-run",
            "--inject",
            "env",
            "busybox",
            "true",
        ],
    ]
    .into_iter()
    .map(|a| (a, 0))
    .collect();
    // No toolkit here: the dry run still prints its plan, so it meets the closed pipe too.
    table.push((
        vec!["--profile", "1g.10gb", "--dry-run", "busybox", "true"],
        2,
    ));
    table
}

fn command(sim: &Sim, args: &[&str]) -> Command {
    let mut c = sim.cmd(args);
    c.env("RUST_BACKTRACE", "1");
    c
}

fn assert_quiet(what: &str, code: Option<i32>, stderr: &[u8], allowed: &[i32]) {
    let err = String::from_utf8_lossy(stderr);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
    assert!(err.is_empty(), "{what}: nothing on stderr, got {err:?}");
    assert!(
        code.is_some_and(|c| allowed.contains(&c)),
        "{what}: exit {code:?}, expected one of {allowed:?}"
    );
}

/// The reader exits before migrun writes a byte: the write end is all migrun gets.
#[test]
fn a_reader_that_is_gone_before_the_first_write() {
    let sim = Sim::new("h100-80gb:8");
    sim.ok(&["gc"]);
    for (args, _) in printing_commands() {
        for _ in 0..TRIES {
            // Close-on-exec: a process another test thread starts meanwhile must not inherit the read end and keep
            // the pipe open (the write would then succeed).
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            drop(read);
            let out = command(&sim, &args)
                .stdout(Stdio::from(write))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert_quiet(
                &args.join(" "),
                out.status.code(),
                &out.stderr,
                &[CLOSED_PIPE],
            );
        }
    }
}

/// `| head -c0` and `| head -c1`: the reader goes away while migrun may still be writing, or after
/// it wrote everything (then the exit is the command's own: nothing was lost).
#[test]
fn a_reader_that_stops_early() {
    let sim = Sim::new("h100-80gb:8");
    sim.ok(&["gc"]);
    for (args, normal) in printing_commands() {
        for i in 0..TRIES {
            let mut child = command(&sim, &args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = child.stdout.take().unwrap();
            if i % 2 == 1 {
                let mut one = [0u8; 1];
                let _ = stdout.read(&mut one);
            }
            drop(stdout);
            let out = child.wait_with_output().unwrap();
            assert_quiet(
                &args.join(" "),
                out.status.code(),
                &out.stderr,
                &[normal, CLOSED_PIPE],
            );
        }
    }
}

/// The shell form the issue was reported with: `(sleep 0.2; exec migrun ...) | true` always meets a
/// closed pipe; under `pipefail` the pipeline's status is migrun's.
#[test]
fn the_shell_pipeline_form() {
    let sim = Sim::new("h100-80gb:8");
    sim.ok(&["gc"]);
    let state = sim.tmp.path().join("state");
    let config = sim.tmp.path().join("config.toml");
    for args in [&["profiles"][..], &["status", "--json"], &["man"]] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"set -o pipefail; (sleep 0.2; exec "$@") | true"#)
            .arg("bash")
            .arg(BIN)
            .arg("--simulate")
            .arg("h100-80gb:8")
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_quiet(
            &args.join(" "),
            out.status.code(),
            &out.stderr,
            &[CLOSED_PIPE],
        );
    }
}
