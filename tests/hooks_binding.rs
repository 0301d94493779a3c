//! A container cannot take or free a lease that is not its own, under real runc: a lease is bound to
//! its container by what migrun recorded and what the runtime reports (container id and bundle from the
//! state JSON), never by the container's own annotations. The victim is a lease held by a live
//! process (`migrun alloc --holder-pid`, as a script, a hub or podman's precreate hold one).
//! Needs root, runc and busybox-static (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{busybox_bundle, patch_bundle_config, unique_name, Runc};
use hooks_common::*;
use migrun::lease::{Holder, Lease};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A live process holding a lease, killed at the end of the test.
struct Victim {
    holder: Child,
    lease: Lease,
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn victim(sim: &Sim) -> Victim {
    let holder = Command::new(common::engines::busybox_static())
        .args(["sleep", "600"])
        .spawn()
        .expect("start the holder");
    let out = sim
        .migrun()
        .args(["alloc", "--profile", "1g.10gb", "--holder-pid"])
        .arg(holder.id().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = sim.leases();
    assert_eq!(leases.len(), 1);
    let lease = leases[0].clone();
    assert!(matches!(lease.holder, Holder::Process { pid, .. } if pid == holder.id()));
    Victim { holder, lease }
}

/// A busybox bundle with migrun's prestart and poststop hooks, shaped by `f`.
fn attacker_bundle(sim: &Sim, dir: &Path, f: impl FnOnce(&mut Value)) -> PathBuf {
    let bundle = busybox_bundle(
        &dir.join("bundle"),
        &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"],
    );
    patch_bundle_config(&bundle, |s| {
        s["hooks"] = json!({
            "prestart": [sim.hook("prestart")],
            "poststop": [sim.hook("poststop")],
        });
        f(s);
    });
    bundle
}

/// `runc run` the bundle (prestart, then poststop as runc destroys the container); returns its output.
fn runc_run(runc: &Runc, bundle: &Path) -> std::process::Output {
    runc.run_cmd(bundle, &unique_name("hooks-attacker"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_untouched(sim: &Sim, v: &Victim) {
    assert_eq!(
        sim.leases(),
        vec![v.lease.clone()],
        "the victim's lease is as it was; log:\n{}",
        sim.log()
    );
    let inst = sim.instances();
    assert_eq!(inst.len(), 1, "the victim's instance lives");
}

#[test]
fn annotations_naming_another_holders_lease_neither_take_nor_free_it() {
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let v = victim(&sim);
    let t = tempfile::tempdir().unwrap();
    let lease = v.lease.id.to_string();
    let bundle = attacker_bundle(&sim, t.path(), |s| {
        s["annotations"] = json!({"migrun.profile": "1g.10gb", "migrun.lease": lease});
    });
    let out = runc_run(&runc, &bundle);
    assert!(!out.status.success(), "prestart refuses the container");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("lease {lease}")), "{err}");
    // runc ran poststop as it destroyed the refused container: it must not have freed lease N.
    assert!(sim.log().contains("poststop"), "{}", sim.log());
    assert_untouched(&sim, &v);
}

#[test]
fn a_container_posing_as_podman_with_the_victims_device_gets_nothing() {
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let v = victim(&sim);
    let t = tempfile::tempdir().unwrap();
    let lease = v.lease.id.to_string();
    let mig = v.lease.mig_uuid.clone();
    let bundle = attacker_bundle(&sim, t.path(), |s| {
        s["annotations"] = json!({
            "migrun.profile": "1g.10gb",
            "migrun.lease": lease,
            "io.container.manager": "libpod",
            // A guessed hand-over token: only the one precreate recorded for this lease counts.
            "migrun.handover": "0123456789abcdef0123456789abcdef",
        });
        s["process"]["env"].as_array_mut().unwrap().extend([
            json!(format!("NVIDIA_VISIBLE_DEVICES={mig}")),
            json!(format!("MIGRUN_LEASE={lease}")),
        ]);
    });
    let out = runc_run(&runc, &bundle);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the container must not start; it printed {stdout:?}"
    );
    assert!(!stdout.contains(&mig), "{stdout}");
    assert_untouched(&sim, &v);
    assert!(
        matches!(sim.leases()[0].holder, Holder::Process { pid, .. } if pid == v.holder.id()),
        "still the live process's"
    );
}

#[test]
fn poststop_of_a_container_never_frees_a_lease_it_does_not_hold() {
    // Only poststop, the way runc runs it for a container that failed before prestart: its config names
    // the victim's lease (marker and env), its state is its own.
    let sim = Sim::new("h100-80gb:1");
    let v = victim(&sim);
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    fs::create_dir_all(&b).unwrap();
    let lease = v.lease.id.to_string();
    fs::write(
        b.join("config.json"),
        json!({"annotations": {"migrun.profile": "1g.10gb", "migrun.lease": lease, "io.container.manager": "libpod"},
               "process": {"env": [format!("MIGRUN_LEASE={lease}"), format!("NVIDIA_VISIBLE_DEVICES={}", v.lease.mig_uuid)]}})
        .to_string(),
    )
    .unwrap();
    let state = json!({"ociVersion": "1.0.2", "id": "attacker", "status": "stopped", "bundle": b});
    let out = sim.run_hook("poststop", state.to_string().as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_untouched(&sim, &v);
}
