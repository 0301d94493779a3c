//! The launcher's command line without a daemon: help with an example, generated completions and man page, and
//! refusals that happen before anything is allocated or any engine is asked.

use std::process::{Command, Output};

const MIGRUN: &str = env!("CARGO_BIN_EXE_migrun");

fn migrun(args: &[&str]) -> Output {
    let state = tempfile::tempdir().unwrap();
    Command::new(MIGRUN)
        .args(args)
        .env("MIGRUN_SIMULATE", "h100-80gb:1")
        .env("MIGRUN_STATE_DIR", state.path().join("s"))
        .env("MIGRUN_CONFIG", "/dev/null")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_shows_the_launcher_usage_with_an_example() {
    let o = migrun(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    assert!(h.contains("[docker run options] IMAGE [CMD...]"), "{h}");
    assert!(h.contains("migrun --profile 3g.40gb -it --rm"), "{h}");
    // `--help` after migrun's launcher flags is migrun's too; `-h` stays docker's --hostname.
    let o = migrun(&["--profile", "3g.40gb", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let h = stdout(&o);
    assert!(h.contains("--inject") && h.contains("--dry-run"), "{h}");
    assert!(!h.contains("__watch"));
    assert!(
        !stdout(&migrun(&["--help"])).contains("__watch"),
        "the watcher is hidden"
    );
}

#[test]
fn completions_and_man_page_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let o = migrun(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let s = stdout(&o);
        assert!(
            s.contains("migrun") && s.contains("profile") && s.contains("inject"),
            "{shell}: {s}"
        );
    }
    let o = migrun(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = stdout(&o);
    assert!(m.starts_with(".ie") || m.contains(".TH migrun"), "{m}");
    assert!(m.contains("profile"), "{m}");
}

#[test]
fn launcher_refusals_need_no_daemon_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--profile",
                "3g.40gb",
                "--inject",
                "env",
                "-e",
                "NVIDIA_VISIBLE_DEVICES=0",
                "img",
            ],
            "cannot choose its own GPU",
        ),
        (
            &[
                "--profile",
                "3g.40gb",
                "--inject",
                "env",
                "--gpus",
                "all",
                "img",
            ],
            "cannot choose its own GPU",
        ),
        (
            &[
                "--profile",
                "3g.40gb",
                "--inject",
                "env",
                "--device=nvidia.com/gpu=all",
                "img",
            ],
            "cannot choose its own GPU",
        ),
        (
            &["--profile", "3g.40gb", "--inject", "env", "--rm"],
            "no IMAGE",
        ),
        (
            &["--profile", "3g.40gb", "--inject", "env", "--frob", "img"],
            "--frob=VALUE",
        ),
        (&["--inject", "env", "--rm", "img"], "--profile"),
        (
            &[
                "--profile",
                "3g.40gb",
                "--inject",
                "env",
                "--docker",
                "/nonexistent/docker",
                "img",
            ],
            "docker CLI /nonexistent/docker not found",
        ),
        (
            &[
                "--profile",
                "3g.4gb",
                "--inject",
                "env",
                "--dry-run",
                "--docker",
                "/bin/true",
                "img",
            ],
            "did you mean 3g.40gb",
        ),
    ];
    for (args, want) in cases {
        let o = migrun(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: one line: {e}");
    }
}

#[test]
fn dry_run_names_each_injection_mode() {
    let table = [
        ("gpus", "--gpus 'device=<MIG-"),
        (
            "nvidia-runtime",
            "--runtime nvidia -e 'NVIDIA_VISIBLE_DEVICES=<MIG-",
        ),
        ("cdi", "--device 'migrun.io/mig=<lease-id>'"),
        ("env", "-e 'NVIDIA_VISIBLE_DEVICES=<MIG-"),
    ];
    for (mode, want) in table {
        let o = migrun(&[
            "--profile",
            "1g.10gb",
            "--inject",
            mode,
            "--dry-run",
            "--docker",
            "/bin/true",
            "--rm",
            "img",
            "true",
        ]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let s = stdout(&o);
        assert!(s.contains(want), "{mode}: {s}");
        assert!(s.contains("plan: create 1g.10gb"), "{mode}: {s}");
    }
}

/// `migrun` with simulated GPUs in `state` (kept between calls).
fn in_state(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(MIGRUN)
        .args(args)
        .env("MIGRUN_SIMULATE", "h100-80gb:1")
        .env("MIGRUN_STATE_DIR", state)
        .env("MIGRUN_CONFIG", "/dev/null")
        .output()
        .unwrap()
}

#[test]
fn dry_run_plans_reuse_and_no_room_like_a_real_run() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    let dry = [
        "--inject",
        "env",
        "--dry-run",
        "--docker",
        "/bin/true",
        "--rm",
        "img",
    ];
    // A kept 1g.10gb is reused, and its UUID goes into the printed command.
    let o = in_state(&s, &["alloc", "--profile", "1g.10gb", "--keep"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let uuid = stdout(&o).split_whitespace().next().unwrap().to_string();
    let o = in_state(&s, &["release", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = stdout(&in_state(&s, &["status", "--json"]));
    let mut args = vec!["--profile", "1g.10gb"];
    args.extend(dry);
    let o = in_state(&s, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let so = stdout(&o);
    assert!(so.contains("plan: reuse the free 1g.10gb"), "{so}");
    assert!(
        so.contains(&format!("NVIDIA_VISIBLE_DEVICES={uuid}")),
        "{so}"
    );
    assert_eq!(
        stdout(&in_state(&s, &["status", "--json"])),
        before,
        "dry run changed state"
    );

    // With no room left for a 3g.40gb, a dry run says so and exits 3, or says what --wait would do.
    for p in ["3g.40gb", "3g.40gb"] {
        let o = in_state(&s, &["alloc", "--profile", p]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut args = vec!["--profile", "3g.40gb"];
    args.extend(dry);
    let o = in_state(&s, &args);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("plan: no room for 3g.40gb"),
        "{}",
        stdout(&o)
    );
    let mut args = vec!["--profile", "3g.40gb", "--wait=30"];
    args.extend(dry);
    let o = in_state(&s, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("would wait up to 30s"),
        "{}",
        stdout(&o)
    );
}
