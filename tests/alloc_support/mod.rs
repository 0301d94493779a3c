//! Shared helpers of the tests/alloc_*.rs integration tests: a private state dir with a simulated machine, the migrun binary, and the registry/device invariants.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_migrun");

/// One simulated machine with its own state dir and an empty config (so /etc/migrun never leaks in).
pub struct Sim {
    pub tmp: tempfile::TempDir,
    pub spec: String,
}

impl Sim {
    pub fn new(spec: &str) -> Sim {
        // The real state dir (/run/migrun) is a tmpfs; so is /dev/shm. On a disk-backed /tmp every
        // atomic write's fsync costs milliseconds, which would only slow the tests down.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("migrun-test")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        std::fs::write(tmp.path().join("config.toml"), "").unwrap();
        Sim {
            tmp,
            spec: spec.to_string(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.tmp.path().join("config.toml")
    }

    /// `migrun <args>` against this machine.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("MIGRUN_STATE_DIR", self.state_dir())
            .env("MIGRUN_SIMULATE", &self.spec)
            .env("MIGRUN_CONFIG", self.config_path())
            .env_remove("SUDO_UID")
            .env_remove("MIGRUN_TEST_CRASH_AT")
            .env_remove("MIGRUN_TEST_FAIL")
            .env_remove("MIGRUN_NVML_LIB");
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

/// The invariants the crash and concurrency tests insist on: no lease points at a missing
/// instance, no instance is leased twice, and (when `all_leased`) no instance is without a lease.
pub fn check_invariants(status: &Value, all_leased: bool) {
    let insts = instances(status);
    let on_device: HashSet<(String, u64, Option<String>)> = insts.iter().cloned().collect();
    let mut leased = HashSet::new();
    for l in leases(status) {
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
