//! The `migrun` binary on its default NVML backend, pointed at the fake libnvidia-ml.so: listings equal `--simulate` and the real H100 capture, errors a real host produces, state and fault counters shared across processes.

mod common;

use assert_cmd::Command;
use common::fake_nvml::FakeNvml;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The real H100 capture, kept in the repository (tests/fixtures/README.md says where it came from)
/// so that a fresh clone compares against it with nothing outside the checkout.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h100-80gb-hbm3")
}

fn fixture(name: &str) -> String {
    let p = fixture_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()))
}

/// `migrun --simulate SPEC` with its own state dir.
fn simulate(spec: &str, state: &Path) -> Command {
    let mut c = Command::cargo_bin("migrun").unwrap();
    c.env_remove("MIGRUN_CONFIG")
        .env_remove("MIGRUN_NVML_LIB")
        .args(["--simulate", spec, "--state-dir"])
        .arg(state);
    c
}

/// Run and return stdout, failing the test with stderr on a non-zero exit.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run an expected failure; returns (exit code, stderr).
fn failure_of(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `status` output without what names the machine's CDI spec dir, which differs by backend (the
/// simulator's is in its state dir, NVML's under the fake host root): the `CDI:` line, the `cdi` key.
/// Each must be there and name `dir`.
fn without_cdi(args: &[&str], out: &str, dir: &Path) -> String {
    match args {
        ["status"] => {
            let line = out
                .lines()
                .find(|l| l.starts_with("CDI: "))
                .expect("a CDI line");
            assert!(
                line.contains(&format!("from {} (", dir.display())),
                "{line}"
            );
            out.lines()
                .filter(|l| !l.starts_with("CDI: "))
                .map(|l| format!("{l}\n"))
                .collect()
        }
        ["status", "--json"] => {
            let mut doc: Value = serde_json::from_str(out).unwrap();
            let cdi = doc
                .as_object_mut()
                .unwrap()
                .remove("cdi")
                .expect("a cdi key");
            assert_eq!(cdi["dir"], dir.display().to_string(), "{cdi}");
            doc.to_string()
        }
        _ => out.to_string(),
    }
}

const LISTINGS: &[&[&str]] = &[
    &["profiles"],
    &["profiles", "--json"],
    &["placements"],
    &["placements", "--json"],
    &["status"],
    &["status", "--json"],
];

#[test]
fn listings_through_nvml_equal_simulate() {
    for spec in [
        "h100-80gb:2",
        "a100-40gb:1,a30-24gb:1:mig-off",
        "h200-141gb,b200-180gb,rtx-pro-6000",
    ] {
        let fake = FakeNvml::new(spec);
        let sim = tempfile::tempdir().unwrap();
        for args in LISTINGS {
            let via_nvml = without_cdi(
                args,
                &stdout_of(fake.command().args(*args)),
                &fake.cdi_dir(),
            );
            let via_sim = without_cdi(
                args,
                &stdout_of(simulate(spec, sim.path()).args(*args)),
                &sim.path().join("cdi"),
            );
            assert_eq!(via_nvml, via_sim, "{spec}: migrun {}", args.join(" "));
        }
    }
}

#[test]
fn instances_and_processes_list_the_same_as_simulate() {
    let spec = "h100-80gb:2";
    let fake = FakeNvml::new(spec);
    let sim = tempfile::tempdir().unwrap();
    // The same foreign instances on both machines, made the same way (driver-chosen placement).
    // (GPU, profile name for `migrun sim`, its H100 profile ID for the fake's machine)
    for (gpu, profile, id) in [
        (0, "3g.40gb", 9),
        (0, "1g.10gb", 19),
        (1, "7g.80gb", 0),
        (0, "1g.20gb", 15),
    ] {
        stdout_of(simulate(spec, sim.path()).args([
            "sim",
            "create-foreign",
            "--gpu",
            &gpu.to_string(),
            "--profile",
            profile,
        ]));
        fake.update(|m| {
            let gi = m.create_gi_anywhere(gpu, id).unwrap();
            m.create_default_ci(gpu, gi).unwrap();
        });
    }
    stdout_of(simulate(spec, sim.path()).args([
        "sim",
        "set-processes",
        "--gpu",
        "0",
        "--gi",
        "2",
        "--count",
        "3",
    ]));
    fake.update(|m| m.set_processes(0, 2, 3).unwrap());
    for args in LISTINGS {
        let via_nvml = without_cdi(
            args,
            &stdout_of(fake.command().args(*args)),
            &fake.cdi_dir(),
        );
        let via_sim = without_cdi(
            args,
            &stdout_of(simulate(spec, sim.path()).args(*args)),
            &sim.path().join("cdi"),
        );
        assert_eq!(via_nvml, via_sim, "migrun {}", args.join(" "));
    }
    let doc: Value =
        serde_json::from_str(&stdout_of(fake.command().args(["status", "--json"]))).unwrap();
    let insts = doc["gpus"][0]["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 3);
    assert!(insts
        .iter()
        .all(|i| i["mig_uuid"].as_str().unwrap().starts_with("MIG-")));
    assert_eq!(insts[1]["processes"], 3);
}

#[test]
fn h100_through_nvml_equals_the_real_capture() {
    let fake = FakeNvml::new("h100-80gb");
    // nvidia-smi mig -lgipp, line for line.
    let text = stdout_of(fake.command().arg("placements"));
    assert_eq!(
        text.trim_end(),
        fixture("nvidia-smi-mig-lgipp.txt").trim_end()
    );

    // The direct NVML reading of the real H100 (pynvml), profile by profile, field by field.
    let doc: Value =
        serde_json::from_str(&stdout_of(fake.command().args(["profiles", "--json"]))).unwrap();
    let gpu = &doc["gpus"][0];
    let nvml: Value = serde_json::from_str(&fixture("nvml-profiles.json")).unwrap();
    assert_eq!(gpu["name"], nvml["name"]);
    assert_eq!(gpu["mig_capable"], true);
    let ours = gpu["profiles"].as_array().unwrap();
    let readable: Vec<&Value> = nvml["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("id").is_some())
        .collect();
    assert_eq!(ours.len(), readable.len());
    for n in readable {
        let o = ours
            .iter()
            .find(|o| o["nvml_index"] == n["index"])
            .unwrap_or_else(|| panic!("NVML index {} missing", n["index"]));
        for (k, want) in [
            ("id", "id"),
            ("name", "name"),
            ("memory_mib", "memorySizeMB"),
            ("slices", "sliceCount"),
            ("instances_total", "instanceCount"),
            ("instances_free", "remaining"),
            ("sm", "multiprocessorCount"),
            ("ce", "copyEngineCount"),
            ("dec", "decoderCount"),
            ("enc", "encoderCount"),
            ("jpeg", "jpegCount"),
            ("ofa", "ofaCount"),
        ] {
            assert_eq!(o[k], n[want], "{} {k}", n["name"]);
        }
        assert_eq!(o["p2p"], n["isP2pSupported"] != 0, "{}", n["name"]);
        let placements: Vec<(u64, u64)> = o["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
            .collect();
        let want: Vec<(u64, u64)> = n["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
            .collect();
        assert_eq!(placements, want, "{}", n["name"]);
    }
    // Total memory as NVML reported it on the real card.
    let status: Value =
        serde_json::from_str(&stdout_of(fake.command().args(["status", "--json"]))).unwrap();
    assert_eq!(
        status["gpus"][0]["memory_mib"].as_u64().unwrap(),
        nvml["memory_total"].as_u64().unwrap() >> 20
    );
}

#[test]
fn without_a_driver_every_command_fails_fast_in_one_line() {
    let t = tempfile::tempdir().unwrap();
    let not_a_lib = t.path().join("libnvidia-ml.so.1");
    std::fs::write(&not_a_lib, "not an ELF file").unwrap();
    for lib in [
        Path::new("/nonexistent/libnvidia-ml.so.1"),
        not_a_lib.as_path(),
    ] {
        for args in [
            &["status"][..],
            &["profiles"],
            &["placements", "--json"],
            &["mig", "enable", "--gpu", "0"],
        ] {
            let start = Instant::now();
            let (code, err) = failure_of(
                Command::cargo_bin("migrun")
                    .unwrap()
                    .env_remove("MIGRUN_SIMULATE")
                    .env_remove("MIGRUN_CONFIG")
                    .env("MIGRUN_STATE_DIR", t.path().join("state"))
                    .env("MIGRUN_NVML_LIB", lib)
                    .args(args),
            );
            let took = start.elapsed().as_secs_f64();
            assert!(took < 1.0, "{args:?} took {took:.2}s");
            assert_eq!(code, 1, "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            for needle in [
                lib.to_str().unwrap(),
                "install the NVIDIA driver",
                "--simulate",
            ] {
                assert!(err.contains(needle), "{args:?}: {needle} missing: {err}");
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn not_mig_capable_and_not_root_are_clear() {
    let fake = FakeNvml::new("h100-80gb:2").nomig(&[1]);
    let status = stdout_of(fake.command().arg("status"));
    assert!(
        status.contains("Fake non-MIG GPU") && status.contains("not MIG-capable"),
        "{status}"
    );
    let (code, err) = failure_of(fake.command().args(["mig", "enable", "--gpu", "1"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("GPU 1") && err.contains("not MIG-capable"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // As a non-root user NVML refuses to list instances: status says what needs root, exit 4.
    let fake = FakeNvml::new("h100-80gb:1").nonroot();
    let (code, err) = failure_of(fake.command().arg("status"));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("listing GPU instances on GPU 0 needs root"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Reading profiles needs no privilege.
    stdout_of(fake.command().arg("profiles"));
}

#[test]
fn mig_enable_through_nvml_is_pending_until_reset() {
    let fake = FakeNvml::new("a30-24gb:2:mig-off");
    let out = stdout_of(fake.command().args(["mig", "enable", "--gpu", "1"]));
    assert!(out.contains("Disabled (pending: Enabled)"), "{out}");
    assert!(out.contains("nvidia-smi -r -i 1"), "{out}");
    let mode = fake.machine().gpus[1].mig;
    assert!(!mode.current && mode.pending);
    fake.update(|m| m.reset_gpu(1).unwrap());
    let doc: Value =
        serde_json::from_str(&stdout_of(fake.command().args(["status", "--json"]))).unwrap();
    assert_eq!(doc["gpus"][1]["mig_mode"]["current"], true);
    assert_eq!(doc["gpus"][0]["mig_mode"]["current"], false);

    let fake = FakeNvml::new("a30-24gb:1:mig-off").nonroot();
    let (code, err) = failure_of(fake.command().args(["mig", "enable", "--gpu", "0"]));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("setting MIG mode on GPU 0 needs root"),
        "{err}"
    );
}

#[test]
fn fault_counters_and_state_are_shared_across_processes() {
    // Each migrun run is a new process reading the MIG mode once: only the second run fails.
    let fake = FakeNvml::new("h100-80gb:1").fail("nvmlDeviceGetMigMode:GPU_IS_LOST:2");
    stdout_of(fake.command().arg("status"));
    let (code, err) = failure_of(fake.command().arg("status"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reading the MIG mode on GPU 0 failed: GPU_IS_LOST"),
        "{err}"
    );
    stdout_of(fake.command().arg("status"));
    assert_eq!(fake.calls("nvmlDeviceGetMigMode"), 3);

    // An instance made by one process is seen (and its UUID listed) by the next.
    fake.update(|m| {
        let gi = m.create_gi(0, 9, 4).unwrap();
        m.create_default_ci(0, gi).unwrap();
    });
    let uuid = fake.machine().gpus[0].instances[0].cis[0].uuid.clone();
    let status = stdout_of(fake.command().arg("status"));
    assert!(status.contains(&uuid), "{status}");

    // A bad fault rule stops the library at init with the reason, instead of being ignored.
    let fake = FakeNvml::new("h100-80gb:1").fail("nvmlNoSuchCall:23");
    let (code, err) = failure_of(fake.command().arg("status"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nvmlNoSuchCall"), "{err}");
}
