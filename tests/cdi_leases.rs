//! Every lease has its CDI spec for exactly as long as it is held, through the simulator and through the real NVML backend on the fake library: alloc writes it (`alloc --json` names the device), release and gc remove it, status reports it; a broken toolkit spec or a spec dir that cannot take the file leaves no lease, no instance and no spec. Needs root for the read-only mount; fails otherwise.

mod alloc_support;
mod common;

use alloc_support::{instances, leases, Sim};
use common::engines::{require, require_root, run_ok};
use common::fake_nvml::FakeNvml;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLKIT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/toolkit-cdi/nvidia.yaml"
);

/// A machine and where its lease specs go by default.
struct Machine {
    sim: Sim,
    cdi_dir: PathBuf,
    /// Where a toolkit spec would be found by default (fake NVML only: its host root).
    host_root: Option<PathBuf>,
}

fn simulated(spec: &str) -> Machine {
    let sim = Sim::new(spec);
    let cdi_dir = sim.state_dir().join("cdi");
    Machine {
        sim,
        cdi_dir,
        host_root: None,
    }
}

fn through_nvml(spec: &str) -> Machine {
    let dir = alloc_support::fast_tempdir();
    let state = dir.path().join("fake-nvml.json");
    let f = FakeNvml::new(spec).with_var("MIGRUN_FAKE_NVML_STATE", &state.display().to_string());
    let (cdi_dir, host_root) = (f.cdi_dir(), f.host_root());
    Machine {
        sim: Sim::through(spec, f.env(), state, Box::new((f, dir))),
        cdi_dir,
        host_root: Some(host_root),
    }
}

fn spec_path(dir: &Path, lease: u64) -> PathBuf {
    dir.join(format!("migrun-mig-{lease}.json"))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// `(path, major, minor)` of each device node in a spec device's edits.
fn nodes(device: &Value) -> Vec<(String, u64, u64)> {
    device["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap().to_string(),
                n["major"].as_u64().unwrap(),
                n["minor"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// alloc on GPU `gpu`: the spec names the lease and its MIG UUID, with the nodes the driver would
/// number for that GPU, GI and CI; status lists it; release removes it.
fn a_lease_s_spec_lives_as_long_as_the_lease(m: &Machine, gpu: u32) {
    let out = m.sim.ok(&[
        "alloc",
        "--profile",
        "1g.10gb",
        "--gpu",
        &gpu.to_string(),
        "--json",
    ]);
    let a: Value = serde_json::from_str(&out).unwrap();
    let (lease, mig) = (
        a["lease"].as_u64().unwrap(),
        a["mig_uuid"].as_str().unwrap(),
    );
    let (gi, ci) = (a["gi"].as_u64().unwrap(), a["ci"].as_u64().unwrap());
    assert_eq!(a["cdi"], format!("migrun.io/mig={lease}"));

    let path = spec_path(&m.cdi_dir, lease);
    let spec = read_json(&path);
    assert_eq!(spec["kind"], "migrun.io/mig");
    assert!(spec.get("containerEdits").is_none(), "no toolkit spec here");
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [lease.to_string().as_str(), mig]);
    // The driver's numbering (the H200 capture's): 3 + 135 per GPU + 9 per GI, the CI right after.
    let gi_cap = 3 + 135 * u64::from(gpu) + 9 * gi;
    let want = vec![
        (format!("/dev/nvidia{gpu}"), 195, u64::from(gpu)),
        (format!("/dev/nvidia-caps/nvidia-cap{gi_cap}"), 241, gi_cap),
        (
            format!("/dev/nvidia-caps/nvidia-cap{}", gi_cap + 1 + ci),
            241,
            gi_cap + 1 + ci,
        ),
        ("/dev/nvidiactl".to_string(), 195, 255),
        ("/dev/nvidia-uvm".to_string(), 238, 0),
        ("/dev/nvidia-uvm-tools".to_string(), 238, 1),
    ];
    assert_eq!(nodes(&spec["devices"][0]), want);
    assert!(spec["devices"][0]["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .contains(&Value::from(format!("NVIDIA_VISIBLE_DEVICES={mig}"))));

    let status = m.sim.status();
    assert_eq!(status["cdi"]["specs"], serde_json::json!([lease]));
    assert_eq!(status["cdi"]["dir"], m.cdi_dir.display().to_string());
    assert_eq!(status["cdi"]["toolkit_spec"], Value::Null);
    let note = status["cdi"]["note"].as_str().unwrap();
    assert!(note.contains("device nodes and env only"), "{note}");
    let text = m.sim.ok(&["status"]);
    let line = text.lines().find(|l| l.starts_with("CDI: ")).unwrap();
    assert!(
        line.contains("(1 spec(s))") && line.contains("device nodes and env only"),
        "{line}"
    );

    m.sim.ok(&["release", &lease.to_string()]);
    assert!(!path.exists(), "release removes the spec");
    assert_eq!(m.sim.status()["cdi"]["specs"], serde_json::json!([]));
}

#[test]
fn simulator_a_lease_s_spec_lives_as_long_as_the_lease() {
    let m = simulated("h100-80gb:2");
    a_lease_s_spec_lives_as_long_as_the_lease(&m, 0);
    a_lease_s_spec_lives_as_long_as_the_lease(&m, 1);
}

#[test]
fn nvml_a_lease_s_spec_lives_as_long_as_the_lease() {
    let m = through_nvml("h100-80gb:2");
    a_lease_s_spec_lives_as_long_as_the_lease(&m, 1);
    assert!(
        !m.sim.state_dir().join("sim.json").exists(),
        "the fake library answered, not the simulator"
    );
}

#[test]
fn the_toolkit_s_edits_are_copied_and_verbose_says_from_where() {
    for m in [simulated("h100-80gb"), through_nvml("h100-80gb")] {
        fs::write(
            m.sim.config_path(),
            format!("cdi_toolkit_spec = \"{TOOLKIT_FIXTURE}\"\n"),
        )
        .unwrap();
        let out = m.sim.run(&["-v", "alloc", "--profile", "1g.10gb"]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "CDI device migrun.io/mig=1 in {}, with the NVIDIA toolkit's mounts, hooks and env from {TOOLKIT_FIXTURE}",
                spec_path(&m.cdi_dir, 1).display()
            )),
            "{err}"
        );
        let spec = read_json(&spec_path(&m.cdi_dir, 1));
        let common = &spec["containerEdits"];
        assert_eq!(common["mounts"].as_array().unwrap().len(), 2, "{common}");
        assert_eq!(common["hooks"].as_array().unwrap().len(), 2, "{common}");
        assert_eq!(
            m.sim.status()["cdi"]["toolkit_spec"],
            Value::from(TOOLKIT_FIXTURE)
        );
    }
    // Without one, -v says the spec carries nodes and env only, and where it looked.
    let m = simulated("h100-80gb");
    let out = m.sim.run(&["-v", "alloc", "--profile", "1g.10gb"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("with device nodes and env only: no NVIDIA toolkit CDI spec (looked for /var/run/cdi/nvidia.yaml"),
        "{err}"
    );
}

#[test]
fn gc_removes_the_specs_of_leases_no_longer_held_and_nothing_else() {
    for m in [simulated("h100-80gb"), through_nvml("h100-80gb")] {
        let mut holder = Command::new("sleep").arg("600").spawn().unwrap();
        let (_, lease) = m.sim.alloc(&[
            "--profile",
            "1g.10gb",
            "--holder-pid",
            &holder.id().to_string(),
        ]);
        let (_, kept) = m.sim.alloc(&["--profile", "1g.10gb"]);
        let path = spec_path(&m.cdi_dir, lease);
        assert!(path.is_file());
        // A stray spec of a lease this registry never had, and another vendor's file.
        fs::copy(&path, spec_path(&m.cdi_dir, 99)).unwrap();
        fs::write(m.cdi_dir.join("nvidia.yaml"), "not migrun's").unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(path.is_file(), "nothing removes it before gc");

        let out = m.sim.ok(&["gc"]);
        assert!(
            out.contains(&format!("removed the CDI spec of lease {lease}")),
            "{out}"
        );
        assert!(out.contains("removed the CDI spec of lease 99"), "{out}");
        assert_eq!(
            files_in(&m.cdi_dir),
            [format!("migrun-mig-{kept}.json"), "nvidia.yaml".to_string()]
        );
        assert_eq!(leases(&m.sim.status()).len(), 1);
    }
}

#[test]
fn a_broken_toolkit_spec_refuses_with_nothing_allocated() {
    for m in [simulated("h100-80gb"), through_nvml("h100-80gb")] {
        let bad = m.sim.tmp.path().join("nvidia.yaml");
        fs::write(
            &bad,
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [\n",
        )
        .unwrap();
        fs::write(
            m.sim.config_path(),
            format!("cdi_toolkit_spec = \"{}\"\n", bad.display()),
        )
        .unwrap();
        let check = |m: &Machine, bad: &Path| {
            let out = m.sim.run(&["alloc", "--profile", "1g.10gb"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(&format!(
                    "the NVIDIA toolkit's CDI spec {} is not usable",
                    bad.display()
                )) && err.contains("nvidia-ctk cdi generate"),
                "{err}"
            );
            let status = m.sim.status();
            assert!(leases(&status).is_empty() && instances(&status).is_empty());
            assert!(store_is_empty(&m.cdi_dir), "{:?}", files_in(&m.cdi_dir));
            // status says why no spec can be written.
            let e = status["cdi"]["toolkit_error"].as_str().unwrap();
            assert!(e.contains(&bad.display().to_string()), "{e}");
            let text = m.sim.ok(&["status"]);
            assert!(
                text.contains("none can be written until the toolkit spec is fixed"),
                "{text}"
            );
        };
        check(&m, &bad);
        // Found where the toolkit puts it, not named in the config: the same refusal.
        if let Some(root) = &m.host_root {
            fs::write(m.sim.config_path(), "").unwrap();
            let found = root.join("etc/cdi/nvidia.yaml");
            fs::create_dir_all(found.parent().unwrap()).unwrap();
            fs::copy(&bad, &found).unwrap();
            check(&m, &found);
        }
    }
}

fn store_is_empty(dir: &Path) -> bool {
    migrun::cdi::store::list(dir).unwrap().is_empty()
        && files_in(dir).iter().all(|f| !f.ends_with(".tmp"))
}

/// A tmpfs at a temp dir, read-only, unmounted (lazily) on drop.
struct ReadOnlyTmpfs(tempfile::TempDir);

impl ReadOnlyTmpfs {
    fn new() -> ReadOnlyTmpfs {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new(require("mount"))
                .args(["-t", "tmpfs", "-o", "size=1m,mode=0755,ro"])
                .arg("migrun-cdi-test")
                .arg(dir.path()),
        );
        ReadOnlyTmpfs(dir)
    }
}

impl Drop for ReadOnlyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_spec_dir_that_refuses_the_file_at_alloc_time_leaves_no_lease_no_instance_no_spec() {
    for m in [simulated("h100-80gb"), through_nvml("h100-80gb")] {
        let ro = ReadOnlyTmpfs::new();
        fs::write(
            m.sim.config_path(),
            format!("cdi_dir = \"{}\"\n", ro.0.path().display()),
        )
        .unwrap();
        let out = m.sim.run(&["alloc", "--profile", "1g.10gb"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "cannot write a spec in CDI spec dir {}: Read-only file system",
                ro.0.path().display()
            )) && err.contains("lease 1 was released again, nothing is held"),
            "{err}"
        );
        let status = m.sim.status();
        assert!(leases(&status).is_empty(), "{status}");
        assert!(
            instances(&status).is_empty(),
            "the new instance is destroyed: {status}"
        );
        assert!(files_in(ro.0.path()).is_empty());
    }
}

/// `alloc --name`: the spec declares the name too, status and `--json` show it, a second live lease
/// cannot take it, `release NAME` ends the lease, and the name is then free again.
#[test]
fn a_named_lease_is_a_device_a_release_target_and_unique() {
    let m = simulated("h100-80gb");
    let out = m.sim.ok(&[
        "alloc",
        "--profile",
        "1g.10gb",
        "--name",
        "trainer",
        "--json",
    ]);
    let a: Value = serde_json::from_str(&out).unwrap();
    let (lease, mig) = (
        a["lease"].as_u64().unwrap(),
        a["mig_uuid"].as_str().unwrap(),
    );
    assert_eq!(a["name"], "trainer");
    let spec = read_json(&spec_path(&m.cdi_dir, lease));
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [lease.to_string().as_str(), "trainer", mig]);
    // Same edits under every name.
    assert_eq!(
        spec["devices"][0]["containerEdits"],
        spec["devices"][1]["containerEdits"]
    );
    assert_eq!(leases(&m.sim.status())[0]["name"], "trainer");
    let text = m.sim.ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("{lease} trainer")) && l.contains(mig)),
        "{text}"
    );

    let before = (m.sim.snapshot_files(), files_in(&m.cdi_dir));
    let out = m
        .sim
        .run(&["alloc", "--profile", "1g.10gb", "--name", "trainer"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("lease name \"trainer\" is taken by lease {lease}"))
            && err.contains("`migrun release trainer`")
            && err.contains("pick another --name"),
        "{err}"
    );
    assert_eq!(before, (m.sim.snapshot_files(), files_in(&m.cdi_dir)));

    // By name (ownership by name: tests/policy_cli.rs, which may run under sudo).
    m.sim.ok(&["release", "trainer"]);
    assert!(!spec_path(&m.cdi_dir, lease).exists());
    assert!(leases(&m.sim.status()).is_empty());
    let e = m.sim.run(&["release", "trainer"]);
    assert_eq!(e.status.code(), Some(2));
    // Free again.
    m.sim.alloc(&["--profile", "1g.10gb", "--name", "trainer"]);
    m.sim.ok(&["release", "trainer"]);
}

/// Two allocations racing for one name: exactly one gets it, the other fails with the one-line
/// refusal, and nothing of the loser is left (no lease, no instance, no spec).
#[test]
fn two_racing_allocations_of_one_name_one_wins_nothing_left_behind() {
    let m = simulated("h100-80gb");
    for round in 0..3 {
        let spawn = || {
            m.sim
                .cmd(&["alloc", "--profile", "1g.10gb", "--name", "racer", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one wins: {outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(lost.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("lease name \"racer\" is taken by lease"),
            "{err}"
        );
        let a: Value = serde_json::from_slice(&won[0].stdout).unwrap();
        let lease = a["lease"].as_u64().unwrap();
        let status = m.sim.status();
        assert_eq!(leases(&status).len(), 1, "{status}");
        assert_eq!(instances(&status).len(), 1, "{status}");
        assert_eq!(files_in(&m.cdi_dir), [format!("migrun-mig-{lease}.json")]);
        m.sim.ok(&["release", "racer"]);
        assert!(files_in(&m.cdi_dir).is_empty());
    }
}
