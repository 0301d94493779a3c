//! MIG mode enable/disable on the simulator: pending until a simulated reset, refused while blocked, blockers named.

use assert_cmd::Command;
use std::path::Path;

fn migrun(spec: &str, state: &Path) -> Command {
    let mut c = Command::cargo_bin("migrun").unwrap();
    c.env_remove("MIGRUN_CONFIG")
        .args(["--simulate", spec, "--state-dir"])
        .arg(state);
    c
}

fn mode(spec: &str, state: &Path, gpu: usize) -> (bool, bool) {
    let out = migrun(spec, state)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["gpus"][gpu]["mig_mode"];
    (
        m["current"].as_bool().unwrap(),
        m["pending"].as_bool().unwrap(),
    )
}

#[test]
fn enable_is_pending_until_a_simulated_reset() {
    let t = tempfile::tempdir().unwrap();
    let (spec, s) = ("a30-24gb:2:mig-off", t.path());
    let out = migrun(spec, s)
        .args(["mig", "enable", "--gpu", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Disabled (pending: Enabled)"), "{text}");
    assert!(text.contains("sim reset-gpu 1"), "{text}");
    assert_eq!(mode(spec, s, 1), (false, true));
    assert_eq!(mode(spec, s, 0), (false, false), "other GPU untouched");
    // Creating is still refused until the reset: MIG is not on yet.
    let out = migrun(spec, s)
        .args(["sim", "create-foreign", "--gpu", "1", "--profile", "1g.6gb"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let status = String::from_utf8(migrun(spec, s).arg("status").output().unwrap().stdout).unwrap();
    assert!(status.contains("MIG mode change pending"), "{status}");
    migrun(spec, s)
        .args(["sim", "reset-gpu", "1"])
        .assert()
        .success();
    assert_eq!(mode(spec, s, 1), (true, true));
    migrun(spec, s)
        .args(["sim", "create-foreign", "--gpu", "1", "--profile", "1g.6gb"])
        .assert()
        .success();
}

#[test]
fn disable_is_refused_while_instances_exist_and_reset_refuses_too() {
    let t = tempfile::tempdir().unwrap();
    let (spec, s) = ("h100-80gb:1", t.path());
    migrun(spec, s)
        .args([
            "sim",
            "create-foreign",
            "--gpu",
            "0",
            "--profile",
            "2g.20gb",
        ])
        .assert()
        .success();
    let out = migrun(spec, s)
        .args(["mig", "disable", "--gpu", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("refusing to disable MIG mode on GPU 0"),
        "{err}"
    );
    assert!(err.contains("1 MIG instance(s) exist"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(mode(spec, s, 0), (true, true), "nothing changed");
}

#[test]
fn enable_is_refused_while_processes_run() {
    let t = tempfile::tempdir().unwrap();
    let (spec, s) = ("h100-80gb:1", t.path());
    // A GPU with MIG on and a busy instance: disabling names both blockers.
    let out = migrun(spec, s)
        .args([
            "sim",
            "create-foreign",
            "--gpu",
            "0",
            "--profile",
            "1g.10gb",
        ])
        .output()
        .unwrap();
    let gi: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    migrun(spec, s)
        .args([
            "sim",
            "set-processes",
            "--gpu",
            "0",
            "--gi",
            &gi.to_string(),
            "--count",
            "2",
        ])
        .assert()
        .success();
    let out = migrun(spec, s)
        .args(["mig", "disable", "--gpu", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("2 compute process(es) run on it"), "{err}");
    assert!(err.contains("MIG instance(s) exist"), "{err}");
}

#[test]
fn already_in_mode_changes_nothing_and_not_capable_is_clear() {
    let t = tempfile::tempdir().unwrap();
    let (spec, s) = ("h100-80gb:1:mig-off", t.path());
    let out = migrun(spec, s)
        .args(["mig", "disable", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("(unchanged)"));
    let out = migrun(spec, s)
        .args(["mig", "enable", "--gpu", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = migrun(spec, s).args(["mig", "enable"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "needs --gpu or --all");
}

#[test]
fn enable_is_refused_while_processes_run_on_the_whole_gpu() {
    let t = tempfile::tempdir().unwrap();
    let (spec, s) = ("h100-80gb:1:mig-off", t.path());
    migrun(spec, s)
        .args(["sim", "set-processes", "--gpu", "0", "--count", "1"])
        .assert()
        .success();
    let out = migrun(spec, s)
        .args(["mig", "enable", "--gpu", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("refusing to enable MIG mode on GPU 0"),
        "{err}"
    );
    assert!(err.contains("1 compute process(es)"), "{err}");
    assert_eq!(mode(spec, s, 0), (false, false));
}
