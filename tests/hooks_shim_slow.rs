//! The self-binding shim's delete (`migrun-runtime delete` after a create with `--pid-file`) against a slow
//! simulated driver (issue 23's latency model): a whole-GPU-instance lease is left draining to a background worker,
//! as poststop leaves it, so the engine's delete never waits for the destroy; a compute-instance lease (issue 22) is
//! still released synchronously under the lock (docs/leases.md, a known limit), and never takes a GPU instance that
//! holds another lease's compute instance with it. Ordering, not timing, is asserted.

mod common;
mod hooks_common;

use hooks_common::*;
use migrun::lease::{Holder, LeaseState};
use serde_json::json;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `migrun-runtime` in front of a stand-in runtime that writes this test's pid as the container's init pid and
/// exits 0; `<root>/<id>` stands for the container the runtime keeps.
struct Shim {
    sim: Sim,
    link: PathBuf,
    config: PathBuf,
    root: PathBuf,
}

impl Shim {
    /// On `spec` (a100-80gb for compute instances: migrun's tables know H100's only by name).
    fn new(spec: &str) -> Shim {
        let sim = Sim::new(spec);
        let dir = sim.tmp.path().join("shim");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("migrun-runtime");
        std::os::unix::fs::symlink(migrun_bin(), &link).unwrap();
        let fake = dir.join("fake-runc");
        write_exec(
            &fake,
            &format!(
                "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in --pid-file) echo {pid} > \"$2\";; esac; shift; done\nexit 0\n",
                pid = std::process::id()
            ),
        );
        let config = dir.join("config.toml");
        fs::write(&config, format!("runtime = \"{}\"\n", fake.display())).unwrap();
        let root = sim.tmp.path().join("runtime-root");
        Shim {
            sim,
            link,
            config,
            root,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.sim.shim_command(&self.link, &self.config, args)
    }

    fn run(&self, args: &[&str]) {
        let st = self.cmd(args).status().unwrap();
        assert_eq!(st.code(), Some(0), "{args:?}; log:\n{}", self.sim.log());
    }

    /// The engine's create of container `id` asking for `profile`, with `--pid-file` (the shim binds the lease).
    fn create(&self, id: &str, profile: &str) {
        let b = self.sim.tmp.path().join(format!("bundle-{id}"));
        fs::create_dir_all(&b).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "env": ["PATH=/bin", format!("MIGRUN_PROFILE={profile}")], "cwd": "/"},
            "root": {"path": "rootfs"},
            "linux": {}
        });
        fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        fs::create_dir_all(self.root.join(id)).unwrap();
        let pid_file = self.sim.tmp.path().join(format!("{id}.pid"));
        let (root, b, pid_file) = (
            self.root.to_str().unwrap(),
            b.to_str().unwrap(),
            pid_file.to_str().unwrap(),
        );
        self.run(&[
            "--root",
            root,
            "create",
            "--bundle",
            b,
            "--pid-file",
            pid_file,
            id,
        ]);
    }

    /// The engine's delete of `id`, once the runtime holds it no more.
    fn delete(&self, id: &str) {
        fs::remove_dir(self.root.join(id)).unwrap();
        self.run(&["--root", self.root.to_str().unwrap(), "delete", id]);
    }

    fn latency(&self, setting: &str) {
        let st = self.sim.migrun().args(["sim", "latency", setting]).status();
        assert!(st.unwrap().success());
    }

    fn lease_of(&self, id: &str) -> Option<migrun::lease::Lease> {
        self.sim
            .leases()
            .into_iter()
            .find(|l| matches!(&l.holder, Holder::Container { id: c, .. } if c == id))
    }
}

#[test]
fn the_shims_delete_leaves_a_slow_destroy_to_the_background_as_poststop_does() {
    let s = Shim::new("h100-80gb:1");
    s.create("w1", "1g.10gb");
    let l = s.lease_of("w1").expect("the shim bound the lease");
    assert_eq!(s.sim.instances().len(), 1);
    s.latency("destroy-gi=3000");
    s.delete("w1");
    // delete is back while the 3 s destroy still runs: the lease is draining, the instance still there.
    let now = s.sim.leases();
    assert_eq!(now.len(), 1, "log:\n{}", s.sim.log());
    assert_eq!((now[0].id, now[0].state), (l.id, LeaseState::Draining));
    assert!(!s.sim.state_dir().join("shim/w1.json").exists());
    let t0 = Instant::now();
    while !(s.sim.leases().is_empty() && s.sim.instances().is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the background destroy never finished; log:\n{}",
            s.sim.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_shims_delete_of_a_compute_instance_lease_returns_before_its_destroy_and_spares_its_neighbour(
) {
    let s = Shim::new("a100-80gb:1");
    s.create("c1", "1c.3g.40gb");
    s.create("c2", "1c.3g.40gb");
    let (a, b) = (s.lease_of("c1").unwrap(), s.lease_of("c2").unwrap());
    assert_eq!(
        a.gi,
        b.gi,
        "one sharing GPU instance; log:\n{}",
        s.sim.log()
    );
    s.latency("destroy-ci=1500,destroy-gi=1500");
    let t0 = Instant::now();
    s.delete("c1");
    // The delete is back before the 1.5 s destroy: c1's lease is draining, its worker destroys the compute instance.
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    let now = s.sim.leases();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now
        .iter()
        .any(|l| l.id == a.id && l.state == LeaseState::Draining));
    // Once the worker is done: c1's lease and compute instance are gone, c2's and the GPU instance stay.
    let left = s.sim.settled_leases();
    assert_eq!(left.len(), 1, "{left:?}; log:\n{}", s.sim.log());
    assert_eq!((left[0].id, left[0].state), (b.id, LeaseState::Active));
    let gis = s.sim.instances();
    assert_eq!(gis.len(), 1, "{gis:?}");
    let cis: Vec<&str> = gis[0]
        .compute_instances
        .iter()
        .map(|c| c.mig_uuid.as_str())
        .collect();
    assert_eq!(cis, [b.mig_uuid.as_str()]);
    // The last one's worker takes the GPU instance with it.
    let t0 = Instant::now();
    s.delete("c2");
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    // Its lease goes once the compute instance is destroyed; the emptied GPU instance's destroy follows.
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    let t0 = Instant::now();
    while !s.sim.instances().is_empty() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.sim.instances().is_empty(), "log:\n{}", s.sim.log());
}
