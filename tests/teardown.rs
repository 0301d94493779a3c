//! Teardown and the MIG-mode/lease interplay, on the simulator and through the fake NVML library.

mod common;

use assert_cmd::Command;
use common::fake_nvml::FakeNvml;
use serde_json::Value;

/// A way to run migrun against one simulated machine: `--simulate` or the fake NVML library.
enum Machine {
    Sim(tempfile::TempDir, &'static str),
    Fake(FakeNvml),
}

impl Machine {
    fn sim(spec: &'static str) -> Machine {
        Machine::Sim(tempfile::tempdir_in("/dev/shm").unwrap(), spec)
    }
    fn fake(spec: &str) -> Machine {
        Machine::Fake(FakeNvml::new(spec))
    }
    fn cmd(&self) -> Command {
        match self {
            Machine::Sim(dir, spec) => {
                let mut c = Command::cargo_bin("migrun").unwrap();
                c.env_remove("MIGRUN_CONFIG")
                    .args(["--simulate", spec, "--state-dir"])
                    .arg(dir.path());
                c
            }
            Machine::Fake(f) => f.command(),
        }
    }
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.run(args)).unwrap()
    }
    /// Create an instance outside migrun (an admin's), returning its GI id.
    fn foreign(&self, gpu: u32, profile: &str) -> u32 {
        match self {
            Machine::Sim(..) => self
                .run(&[
                    "sim",
                    "create-foreign",
                    "--gpu",
                    &gpu.to_string(),
                    "--profile",
                    profile,
                ])
                .split_whitespace()
                .nth(3)
                .unwrap()
                .parse()
                .unwrap(),
            Machine::Fake(f) => {
                let id = self.json(&["profiles", "--json"])["gpus"][gpu as usize]["profiles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["short_name"] == profile)
                    .unwrap()["id"]
                    .as_u64()
                    .unwrap() as u32;
                f.update(|m| {
                    let gi = m.create_gi_anywhere(gpu, id).unwrap();
                    m.create_default_ci(gpu, gi).unwrap();
                    gi
                })
            }
        }
    }
    fn set_processes(&self, gpu: u32, gi: u32, n: u32) {
        match self {
            Machine::Sim(..) => {
                self.run(&[
                    "sim",
                    "set-processes",
                    "--gpu",
                    &gpu.to_string(),
                    "--gi",
                    &gi.to_string(),
                    "--count",
                    &n.to_string(),
                ]);
            }
            Machine::Fake(f) => f.update(|m| m.set_processes(gpu, gi, n).unwrap()),
        }
    }
}

fn instances(m: &Machine, gpu: usize) -> Vec<(u64, String)> {
    m.json(&["status", "--json"])["gpus"][gpu]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["gi"].as_u64().unwrap(),
                i["profile"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn gi_of(alloc_json: &Value) -> u64 {
    alloc_json["gi"]
        .as_u64()
        .unwrap_or_else(|| panic!("no gi in {alloc_json}"))
}

/// Leased and foreign instances stay, busy ones stay, the rest of migrun's go.
fn teardown_leaves_leased_and_foreign(m: Machine) {
    let leased = m.json(&["alloc", "--profile", "3g.40gb", "--json"]);
    let kept = m.json(&["alloc", "--profile", "1g.10gb", "--keep", "--json"]);
    let busy = m.json(&["alloc", "--profile", "2g.20gb", "--keep", "--json"]);
    let kept_lease = kept["lease"].as_u64().unwrap();
    let busy_lease = busy["lease"].as_u64().unwrap();
    m.run(&["release", &kept_lease.to_string()]);
    m.run(&["release", &busy_lease.to_string()]);
    m.set_processes(0, gi_of(&busy) as u32, 1);
    let foreign = m.foreign(0, "1g.10gb");
    assert_eq!(instances(&m, 0).len(), 4);

    let out = m.run(&["teardown"]);
    assert!(out.contains("1 destroyed, 3 left"), "{out}");
    assert!(out.contains("leased (lease"), "{out}");
    assert!(out.contains("busy: 1 compute process(es)"), "{out}");
    assert!(out.contains("not created by migrun"), "{out}");
    let left: Vec<u64> = instances(&m, 0).iter().map(|i| i.0).collect();
    assert!(left.contains(&gi_of(&leased)));
    assert!(left.contains(&(foreign as u64)));
    assert!(left.contains(&gi_of(&busy)));
    assert!(
        !left.contains(&gi_of(&kept)),
        "the idle kept instance is gone"
    );

    // The busy one goes once idle; the foreign one only with --include-foreign on an explicit GPU.
    m.set_processes(0, gi_of(&busy) as u32, 0);
    let out = m.run(&["teardown", "--all"]);
    assert!(out.contains("1 destroyed, 2 left"), "{out}");
    let out = m
        .cmd()
        .args(["teardown", "--include-foreign"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--include-foreign needs --gpu");
    let out = m.run(&["teardown", "--gpu", "0", "--include-foreign"]);
    assert!(out.contains("1 destroyed, 1 left"), "{out}");
    assert_eq!(
        instances(&m, 0),
        vec![(gi_of(&leased), "3g.40gb".to_string())],
        "only the leased instance remains"
    );
}

#[test]
fn teardown_on_the_simulator() {
    teardown_leaves_leased_and_foreign(Machine::sim("h100-80gb:1"));
}

#[test]
fn teardown_through_the_fake_nvml() {
    teardown_leaves_leased_and_foreign(Machine::fake("h100-80gb:1"));
}

/// `--force` releases leases whose holder died before tearing down.
fn force_releases_stale_leases(m: Machine) {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    m.run(&["alloc", "--profile", "1g.10gb", "--holder-pid", &pid]);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = m.run(&["teardown"]);
    assert!(
        out.contains("0 destroyed, 1 left"),
        "without --force a lease is a lease: {out}"
    );
    let out = m.run(&["teardown", "--force"]);
    assert!(out.contains("released first"), "{out}");
    assert!(instances(&m, 0).is_empty(), "{out}");
    let status = m.json(&["status", "--json"]);
    assert!(
        status["leases"].as_array().is_none_or(|l| l.is_empty()),
        "{status}"
    );
}

#[test]
fn force_on_the_simulator() {
    force_releases_stale_leases(Machine::sim("h100-80gb:1"));
}

#[test]
fn force_through_the_fake_nvml() {
    force_releases_stale_leases(Machine::fake("h100-80gb:1"));
}

/// Leases block MIG mode changes and simulated resets; disable is refused while any instance exists.
fn leases_block_mode_changes(m: Machine) {
    let a = m.json(&["alloc", "--profile", "1g.10gb", "--gpu", "0", "--json"]);
    let lease = a["lease"].as_u64().unwrap().to_string();
    let out = m
        .cmd()
        .args(["mig", "disable", "--gpu", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("migrun holds lease(s) {lease}")),
        "{err}"
    );
    assert!(err.contains("1 MIG instance(s) exist"), "{err}");
    m.run(&["release", &lease]);
    // Released and destroyed: now disable is allowed and pends until a reset.
    let out = m.run(&["mig", "disable", "--gpu", "0"]);
    assert!(out.contains("Enabled (pending: Disabled)"), "{out}");
}

#[test]
fn mode_changes_on_the_simulator() {
    let m = Machine::sim("h100-80gb:1");
    leases_block_mode_changes(m);
}

#[test]
fn mode_changes_through_the_fake_nvml() {
    leases_block_mode_changes(Machine::fake("h100-80gb:1"));
}

#[test]
fn simulated_reset_refuses_while_leases_exist() {
    let m = Machine::sim("a100-40gb:1");
    let a = m.json(&["alloc", "--profile", "1g.5gb", "--json"]);
    let out = m.cmd().args(["sim", "reset-gpu", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("leases"));
    let lease = a["lease"].as_u64().unwrap().to_string();
    m.run(&["release", &lease]);
    m.run(&["sim", "reset-gpu", "0"]);
}
