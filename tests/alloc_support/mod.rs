//! Shared helpers of the tests/alloc_*.rs integration tests: a private state dir with a simulated machine, the migrun binary, and the registry/device invariants.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_migrun");

/// One simulated machine with its own state dir and an empty config (so /etc/migrun never leaks in).
/// It is reached either through `--simulate` (the simulator backend) or through the fake
/// `libnvidia-ml.so` (the real NVML backend), see [`Sim::through`].
pub struct Sim {
    pub tmp: tempfile::TempDir,
    pub spec: String,
    /// Extra environment for every command (the fake NVML's variables); empty with `--simulate`.
    pub env: Vec<(String, String)>,
    /// The simulated machine's state file (sim.json in the state dir, or the fake NVML's file).
    pub machine_file: PathBuf,
    simulate: bool,
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// A temp dir on a tmpfs when there is one. The real state dir (/run/migrun) is a tmpfs; on a
/// disk-backed /tmp every atomic write's fsync costs milliseconds, which only slows tests down.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("migrun-test")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir")
}

impl Sim {
    /// A machine reached with `--simulate spec`.
    pub fn new(spec: &str) -> Sim {
        let tmp = fast_tempdir();
        std::fs::write(tmp.path().join("config.toml"), "").unwrap();
        let machine_file = tmp.path().join("state").join("sim.json");
        Sim {
            tmp,
            spec: spec.to_string(),
            env: Vec::new(),
            machine_file,
            simulate: true,
            _guard: None,
        }
    }

    /// A machine reached through another backend: `env` points migrun at it (e.g. the fake NVML's
    /// MIGRUN_NVML_LIB, MIGRUN_FAKE_NVML, MIGRUN_FAKE_NVML_STATE), `machine_file` is its state
    /// file, and `guard` keeps whatever owns it alive.
    pub fn through(
        spec: &str,
        env: Vec<(String, String)>,
        machine_file: PathBuf,
        guard: Box<dyn std::any::Any + Send + Sync>,
    ) -> Sim {
        let tmp = fast_tempdir();
        std::fs::write(tmp.path().join("config.toml"), "").unwrap();
        Sim {
            tmp,
            spec: spec.to_string(),
            env,
            machine_file,
            simulate: false,
            _guard: Some(guard),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.tmp.path().join("config.toml")
    }

    /// Change the simulated machine directly, as an admin's nvidia-smi or a running job would.
    pub fn update<R>(&self, f: impl FnOnce(&mut migrun::gpu::sim::SimMachine) -> R) -> R {
        if self.simulate {
            // The simulator keeps its machine in the state dir; make sure that exists (0700, checked).
            migrun::statedir::StateDir::open(self.state_dir()).expect("state dir");
        }
        let spec: migrun::gpu::sim::SimSpec = self.spec.parse().unwrap();
        migrun::gpu::sim::SimStore::new(&self.machine_file)
            .update(&spec, f)
            .expect("simulated machine")
    }

    /// An instance made outside migrun (lowest free placement, as the driver picks): (GI, MIG UUID).
    pub fn create_foreign(&self, gpu: u32, profile_id: u32) -> (u32, String) {
        self.update(|m| {
            let gi = m.create_gi_anywhere(gpu, profile_id).unwrap();
            (gi, m.create_default_ci(gpu, gi).unwrap().mig_uuid)
        })
    }

    pub fn set_processes(&self, gpu: u32, gi: u32, count: u32) {
        self.update(|m| m.set_processes(gpu, gi, count)).unwrap();
    }

    /// `migrun <args>` against this machine.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("MIGRUN_STATE_DIR", self.state_dir())
            .env("MIGRUN_CONFIG", self.config_path())
            .env_remove("MIGRUN_SIMULATE")
            .env_remove("SUDO_UID")
            .env_remove("MIGRUN_TEST_CRASH_AT")
            .env_remove("MIGRUN_TEST_FAIL")
            .env_remove("MIGRUN_NVML_LIB");
        if self.simulate {
            c.env("MIGRUN_SIMULATE", &self.spec);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run migrun")
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "migrun {args:?} failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `migrun alloc ...`: (MIG UUID, lease id) from the documented `MIG-… lease N` line.
    pub fn alloc(&self, args: &[&str]) -> (String, u64) {
        let mut all = vec!["alloc"];
        all.extend_from_slice(args);
        parse_alloc_line(&self.ok(&all))
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status JSON")
    }

    /// Bytes of every file in the state dir (except locks), to prove a failed command changed nothing.
    pub fn snapshot_files(&self) -> HashMap<PathBuf, Vec<u8>> {
        let mut out = HashMap::new();
        walk(&self.state_dir(), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut HashMap<PathBuf, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(&p, out);
        } else if !p.to_string_lossy().ends_with(".lock") {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

pub fn parse_alloc_line(stdout: &str) -> (String, u64) {
    let line = stdout.trim();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert!(
        parts.len() == 3 && parts[0].starts_with("MIG-") && parts[1] == "lease",
        "unexpected alloc output {line:?}"
    );
    (parts[0].to_string(), parts[2].parse().unwrap())
}

/// (GPU UUID, GI, MIG UUID) of every instance on the device, from `status --json`.
pub fn instances(status: &Value) -> Vec<(String, u64, Option<String>)> {
    let mut out = Vec::new();
    for g in status["gpus"].as_array().unwrap() {
        for i in g["instances"].as_array().unwrap() {
            out.push((
                g["uuid"].as_str().unwrap().to_string(),
                i["gi"].as_u64().unwrap(),
                i["mig_uuid"].as_str().map(String::from),
            ));
        }
    }
    out
}

pub fn leases(status: &Value) -> Vec<Value> {
    status["leases"].as_array().cloned().unwrap_or_default()
}

/// The invariants the crash and concurrency tests insist on: no active lease points at a missing
/// instance, no instance is leased twice, and (when `all_leased`) no instance is without a lease.
/// A draining lease has ended: its instance is being destroyed outside the lock (half-destroyed, or gone
/// before its records are), so only "leased twice" holds for it.
pub fn check_invariants(status: &Value, all_leased: bool) {
    let insts = instances(status);
    let on_device: HashSet<(String, u64, Option<String>)> = insts.iter().cloned().collect();
    let mut leased = HashSet::new();
    for l in leases(status) {
        if l["state"] == "draining" {
            let key = (
                l["gpu_uuid"].as_str().unwrap().to_string(),
                l["gi"].as_u64().unwrap(),
                Some(l["mig_uuid"].as_str().unwrap().to_string()),
            );
            assert!(
                leased.insert(key.clone()),
                "instance {key:?} is leased twice"
            );
            continue;
        }
        let key = (
            l["gpu_uuid"].as_str().unwrap().to_string(),
            l["gi"].as_u64().unwrap(),
            Some(l["mig_uuid"].as_str().unwrap().to_string()),
        );
        assert!(
            on_device.contains(&key),
            "lease {} points at a missing instance {key:?}\n{status:#}",
            l["id"]
        );
        assert!(
            leased.insert(key.clone()),
            "instance {key:?} is leased twice"
        );
    }
    if all_leased {
        for i in &insts {
            assert!(
                leased.contains(i),
                "instance {i:?} has no lease\n{status:#}"
            );
        }
    }
}
pub mod ci_scenarios;
pub mod scenarios;
