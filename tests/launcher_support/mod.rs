//! Helpers for the docker launcher's tests against the private dockerd (tests/launcher_*.rs): one test's world (a
//! simulated or fake-NVML GPU machine, its state dir, the shared daemon and busybox image), and process helpers.
#![allow(dead_code)]

use crate::common::engines::{self, PrivateDockerd};
use crate::common::fake_nvml::FakeNvml;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MIGRUN: &str = env!("CARGO_BIN_EXE_migrun");

/// Where the GPUs come from.
pub enum Gpus {
    /// `--simulate SPEC` (MIGRUN_SIMULATE).
    Sim(&'static str),
    /// migrun's NVML backend over the fake libnvidia-ml.
    Fake(FakeNvml),
}

/// One test's world: a GPU machine with its own state dir, the shared private dockerd, the busybox image.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub docker: &'static PrivateDockerd,
    pub image: String,
    pub gpus: Gpus,
}

impl World {
    /// One simulated H100 80GB.
    pub fn new() -> World {
        World::with(Gpus::Sim("h100-80gb:1"))
    }

    pub fn with(gpus: Gpus) -> World {
        let docker = engines::shared_dockerd();
        let image = engines::busybox_image(docker);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.toml"), "").unwrap();
        World {
            tmp,
            docker,
            image,
            gpus,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// The environment that aims migrun at this world: its GPUs, its state dir, the private daemon.
    pub fn env(&self, c: &mut Command) {
        match &self.gpus {
            Gpus::Sim(spec) => {
                c.env("MIGRUN_SIMULATE", spec);
            }
            Gpus::Fake(fake) => {
                c.env_remove("MIGRUN_SIMULATE").envs(fake.env());
            }
        }
        c.env("MIGRUN_STATE_DIR", self.state())
            .env("MIGRUN_CONFIG", self.tmp.path().join("config.toml"))
            .env("MIGRUN_DOCKER", engines::docker_cli())
            .env("DOCKER_HOST", self.docker.host())
            .env("DOCKER_CONFIG", self.docker.dir().join("cli-config"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
    }

    pub fn migrun(&self) -> Command {
        let mut c = Command::new(MIGRUN);
        self.env(&mut c);
        c
    }

    /// `migrun --profile P --inject env <docker args>` with `--pull never` first among docker's options.
    pub fn launch(&self, profile: &str, docker_args: &[&str]) -> Command {
        let mut c = self.migrun();
        c.args(["--profile", profile, "--inject", "env", "--pull", "never"])
            .args(docker_args);
        c
    }

    pub fn status(&self) -> Value {
        let out = engines::run_ok(self.migrun().args(["status", "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
    }

    pub fn leases(&self) -> Vec<Value> {
        self.status()["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The instances once no lease's instance is still being destroyed in the background (a container's end returns
    /// before its destroy; `release_wait_ms` is 0 by default): waits while `status` shows one releasing, 20 s at most.
    pub fn settled_instances(&self) -> Vec<Value> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let inst = self.instances();
            let releasing = inst
                .iter()
                .any(|i| i["releasing"].as_bool() == Some(true) || i["owner"]["draining"] == true);
            if !releasing || std::time::Instant::now() >= until {
                return inst;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn instances(&self) -> Vec<Value> {
        self.status()["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["instances"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Nothing held, nothing left: no lease and no instance. The launcher returns before the background destroy of
    /// its instance has run (`release_wait_ms` is 0 by default), so this waits for it, 20 s at most.
    pub fn assert_clean(&self, why: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut s = self.status();
        while !(s["leases"].as_array().is_none_or(|l| l.is_empty()) && self.instances().is_empty())
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
            s = self.status();
        }
        assert_eq!(
            s["leases"].as_array().map_or(0, |l| l.len()),
            0,
            "{why}: leases left: {s:#}"
        );
        assert!(self.instances().is_empty(), "{why}: instances left: {s:#}");
    }

    pub fn docker(&self) -> Command {
        self.docker.docker_cmd()
    }

    /// The state of container `id` (`docker inspect`'s `.State.Status`); `None` when the daemon does not know it.
    pub fn container_state(&self, id: &str) -> Option<String> {
        let out = engines::run_output(self.docker().args([
            "inspect",
            "--format",
            "{{.State.Status}}",
            id,
        ]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn is_mig_uuid(s: &str) -> bool {
    s.starts_with("MIG-") && s.len() > 20
}

pub fn wait_output(child: &mut Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("migrun did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut stderr).unwrap();
    }
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}
