//! A private multi-node Slurm cluster for tests/slurm_cluster.rs: builds the SPANK plugin, starts munged, slurmctld and
//! one slurmd per node (each in its own network namespace, with its own simulated GPUs and migrun state dir) through
//! `cluster.sh`, runs Slurm commands against it, and stops it all on drop. It must not touch the host's Slurm.
//!
//! It panics (never skips) when Slurm, munge or the plugin are missing: scripts/setup-test-host.sh installs them.
//! crates/migrun-bench's slurm-bench includes this file too (`#[path]`), so nothing here names the test crate.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const SETUP_HINT: &str = "run scripts/setup-test-host.sh as root (Debian slurmd slurmctld slurm-client munge libslurm-dev libclang-dev)";

/// One compute node: its name, its simulated machine, its MIG count GRES.
pub struct Node {
    pub name: &'static str,
    pub simulate: &'static str,
    pub gres: u32,
}

/// A running cluster; dropping it stops every daemon and removes its namespaces and bridge.
pub struct Cluster {
    dir: TempDir,
    repo: PathBuf,
    migrun: PathBuf,
    pub nodes: Vec<Node>,
}

/// The plugin, built with the same profile into the target dir this test binary lives in (`repo` is the workspace).
pub fn build_plugin(repo: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo)
        .args(["build", "--quiet", "-p", "migrun-spank", "--lib"])
        .env("CARGO_TARGET_DIR", &target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .expect("running cargo to build the SPANK plugin");
    assert!(
        out.status.success(),
        "building the SPANK plugin (cargo build -p migrun-spank) failed; it needs libslurm-dev's spank.h and libclang; {SETUP_HINT}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = profile_dir.join("libmigrun_spank.so");
    assert!(so.is_file(), "{} is missing after the build", so.display());
    so
}

fn script(repo: &Path) -> PathBuf {
    repo.join("tests/slurm_support/cluster.sh")
}

impl Cluster {
    /// Start a cluster of `nodes` whose plugstack loads `plugin`, which runs `migrun`, with its files (and the nodes'
    /// migrun state dirs) in a new directory under `under`. Names (netns, bridge, veths) and the subnet come from
    /// this process's id, the controller port is picked free now, so two test runs on one host do not collide.
    pub fn start(
        repo: &Path,
        plugin: &Path,
        migrun: &Path,
        under: &Path,
        nodes: Vec<Node>,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("migrun-slurm-")
            .tempdir_in(under)
            .unwrap();
        let pid = std::process::id();
        let tag = format!("{:05}", pid % 100_000);
        let subnet = format!("10.{}.{}", 200 + (pid / 250) % 50, pid % 250);
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("bash");
        cmd.arg(script(repo))
            .arg("start")
            .arg(dir.path())
            .arg(&tag)
            .arg(&subnet)
            .arg(port.to_string())
            .arg(plugin)
            .arg(migrun);
        for n in &nodes {
            cmd.arg(format!("{}={}={}", n.name, n.simulate, n.gres));
        }
        let cluster = Cluster {
            dir,
            repo: repo.to_path_buf(),
            migrun: migrun.to_path_buf(),
            nodes,
        };
        let out = cmd.output().expect("running cluster.sh");
        assert!(
            out.status.success(),
            "starting the test cluster failed ({SETUP_HINT}):\n{}\n{}\nslurmctld log tail:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.log_tail("slurmctld.log")
        );
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The migrun binary the nodes run.
    pub fn migrun_path(&self) -> &Path {
        &self.migrun
    }

    pub fn conf(&self) -> PathBuf {
        self.dir().join("slurm.conf")
    }

    fn log_tail(&self, rel: &str) -> String {
        let s = std::fs::read_to_string(self.dir().join(rel)).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The logs that explain a failure: the controller's and each node's.
    pub fn logs(&self) -> String {
        let mut s = format!("--- slurmctld.log\n{}\n", self.log_tail("slurmctld.log"));
        for n in &self.nodes {
            s += &format!(
                "--- {}/slurmd.log\n{}\n",
                n.name,
                self.log_tail(&format!("{}/slurmd.log", n.name))
            );
        }
        s
    }

    /// A Slurm client command (srun, sbatch, squeue …) against this cluster, killed after `limit`.
    pub fn slurm(&self, limit: Duration, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg("-k5")
            .arg(limit.as_secs().to_string())
            .args(args)
            .env("SLURM_CONF", self.conf());
        c.current_dir(self.dir());
        c
    }

    /// Run a Slurm client command to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.slurm(Duration::from_secs(120), args)
            .output()
            .expect("running a Slurm client")
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of this cluster")
    }

    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.dir().join(node).join("migrun")
    }

    /// migrun as that node's slurmd sees it (its simulated GPUs, its state dir); SLURM_CONF lets gc ask squeue.
    pub fn migrun(&self, node: &str) -> Command {
        let mut c = Command::new(&self.migrun);
        c.env("MIGRUN_SIMULATE", self.node(node).simulate)
            .env("MIGRUN_STATE_DIR", self.state_dir(node))
            .env("SLURM_CONF", self.conf())
            .env_remove("MIGRUN_CONFIG");
        c
    }

    /// `migrun status --json` of a node.
    pub fn status(&self, node: &str) -> Value {
        let out = self
            .migrun(node)
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "migrun status on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn leases(&self, node: &str) -> Vec<Value> {
        self.status(node)["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn instances(&self, node: &str) -> usize {
        self.status(node)["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["instances"].as_array().map_or(0, Vec::len))
            .sum()
    }

    /// Every node holds no lease and no instance.
    pub fn assert_empty(&self, when: &str) {
        for n in &self.nodes {
            let st = self.status(n.name);
            assert!(
                st["leases"].as_array().is_none_or(Vec::is_empty) && self.instances(n.name) == 0,
                "{when}: {} still holds leases or instances:\n{st:#}\n{}",
                n.name,
                self.logs()
            );
        }
    }

    /// `sinfo` long state of a node (`idle`, `mixed`, `drained`, `idle+drain` …).
    pub fn node_state(&self, node: &str) -> String {
        let out = self.run(&["sinfo", "-h", "-n", node, "-o", "%T"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until `f` holds, up to `limit`; false when it never did.
    pub fn eventually(&self, limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        f()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script(&self.repo))
            .arg("stop")
            .arg(self.dir())
            .output();
        if std::thread::panicking() {
            // Keep the logs of a failed run; the daemons are stopped.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("slurm test cluster logs kept in {}", dir.keep().display());
        }
    }
}

/// Text of an output, both streams, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `NAME=value` lines of `env` output.
pub fn env_var(out: &str, name: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
}
