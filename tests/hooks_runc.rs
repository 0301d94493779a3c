//! migrun's OCI prestart/poststop hooks under real runc: the NVIDIA hook that runs after migrun's
//! sees the leased MIG device, `runc delete` releases it, and containers that ask for nothing pass
//! through byte for byte. Needs root, runc and busybox-static (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{busybox_bundle, patch_bundle_config, run_ok, unique_name, Runc};
use hooks_common::*;
use migrun::engine::oci::binding::tag_bundle;
use migrun::lease::Holder;
use serde_json::json;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn quiet(cmd: &mut std::process::Command) {
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}

fn wait_stopped(runc: &Runc, id: &str) {
    let t0 = Instant::now();
    loop {
        let out = runc.cmd().args(["state", id]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"stopped\"") {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{id} never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox bundle with migrun's prestart hook, then the NVIDIA stand-in, and migrun's poststop.
fn hooked_bundle(
    sim: &Sim,
    dir: &Path,
    record: &Path,
    f: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let bundle = busybox_bundle(&dir.join("bundle"), &["sh", "-c", "exit 0"]);
    let standin = nvidia_hook_standin(dir, record);
    patch_bundle_config(&bundle, |s| {
        s["hooks"] = json!({
            "prestart": [sim.hook("prestart"), standin],
            "poststop": [sim.hook("poststop")],
        });
        f(s);
    });
    bundle
}

#[test]
fn the_nvidia_hook_sees_the_leased_slice_and_delete_releases_it() {
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let t = tempfile::tempdir().unwrap();
    let record = t.path().join("nvidia-saw");
    let bundle = hooked_bundle(&sim, t.path(), &record, |s| {
        s["annotations"] = json!({"migrun.profile": "1g.10gb"});
        // A device request the container brought is replaced, not kept.
        s["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("NVIDIA_VISIBLE_DEVICES=all"));
    });
    let id = unique_name("hooks-runc");
    // runc runs prestart hooks at create.
    quiet(
        runc.cmd()
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(&id),
    );

    let leases = sim.leases();
    assert_eq!(leases.len(), 1, "{leases:?}\nlog:\n{}", sim.log());
    let l = &leases[0];
    assert_eq!(l.profile, "1g.10gb");
    match &l.holder {
        Holder::Container { id: c, engine, pid } => {
            // Bound to the id and the bundle runc reported.
            assert_eq!(
                (c.as_str(), migrun::engine::engine_family(engine)),
                (id.as_str(), "runc")
            );
            assert_eq!(tag_bundle(engine), Some(bundle.canonicalize().unwrap()));
            assert!(pid.is_some(), "prestart records the init pid");
        }
        h => panic!("holder {h:?}"),
    }
    assert_eq!(
        fs::read_to_string(&record).unwrap().trim(),
        l.mig_uuid,
        "the NVIDIA hook read the leased UUID"
    );
    let cfg = read_json(&bundle.join("config.json"));
    assert_eq!(nvd_of(&cfg), std::slice::from_ref(&l.mig_uuid));
    assert_eq!(cfg["annotations"]["migrun.lease"], l.id.to_string());
    assert_eq!(sim.instances().len(), 1);

    quiet(runc.cmd().args(["start", &id]));
    wait_stopped(&runc, &id);
    // poststop runs at delete.
    quiet(runc.cmd().args(["delete", &id]));
    assert!(
        sim.settled_leases().is_empty(),
        "released at delete; log:\n{}",
        sim.log()
    );
    assert!(
        sim.instances().is_empty(),
        "the instance migrun created is gone"
    );
    assert!(sim.log().contains("destroyed"), "{}", sim.log());

    // poststop again (or for a container without a lease) is fine.
    let state = json!({"ociVersion": "1.0.2", "id": id, "status": "stopped", "bundle": bundle});
    let out = sim.run_hook("poststop", state.to_string().as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_container_that_asks_for_nothing_is_untouched_and_costs_no_state() {
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let t = tempfile::tempdir().unwrap();
    let record = t.path().join("nvidia-saw");
    let bundle = hooked_bundle(&sim, t.path(), &record, |_| {});
    let before = fs::read(bundle.join("config.json")).unwrap();
    run_ok(&mut runc.run_cmd(&bundle, &unique_name("hooks-plain")));
    assert_eq!(
        fs::read(bundle.join("config.json")).unwrap(),
        before,
        "config.json byte-identical"
    );
    assert_eq!(
        fs::read_to_string(&record).unwrap(),
        "",
        "no device for the NVIDIA hook"
    );
    assert!(
        !sim.state_dir().exists(),
        "neither hook opened the state dir"
    );
}

#[test]
fn a_container_that_brings_its_own_gpu_request_without_asking_migrun_gets_none() {
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let t = tempfile::tempdir().unwrap();
    let record = t.path().join("nvidia-saw");
    let bundle = hooked_bundle(&sim, t.path(), &record, |s| {
        let env = s["process"]["env"].as_array_mut().unwrap();
        env.push(json!("NVIDIA_VISIBLE_DEVICES=all"));
        env.push(json!("NVIDIA_MIG_CONFIG_DEVICES=all"));
    });
    run_ok(&mut runc.run_cmd(&bundle, &unique_name("hooks-guard")));
    assert_eq!(fs::read_to_string(&record).unwrap().trim(), "void");
    let cfg = read_json(&bundle.join("config.json"));
    assert_eq!(nvd_of(&cfg), ["void"]);
    assert!(!cfg.to_string().contains("NVIDIA_MIG_CONFIG_DEVICES"));
    assert!(sim.settled_leases().is_empty());
    assert!(
        sim.log().contains("NVIDIA device variables"),
        "{}",
        sim.log()
    );
}

/// Compute-instance slices (issue 22) through the hooks: two containers asking for `1c.3g.40gb` get two
/// compute instances of one GPU instance, each its own MIG UUID handed to the NVIDIA hook; deleting both
/// leaves nothing.
#[test]
fn two_containers_asking_for_a_compute_instance_share_one_gpu_instance() {
    let sim = Sim::new("a100-80gb:1");
    let runc = Runc::new();
    let t = tempfile::tempdir().unwrap();
    let mut made = Vec::new();
    for n in 0..2 {
        let dir = t.path().join(format!("c{n}"));
        fs::create_dir_all(&dir).unwrap();
        let record = dir.join("nvidia-saw");
        let bundle = hooked_bundle(&sim, &dir, &record, |s| {
            s["annotations"] = json!({"migrun.profile": "1c.3g.40gb"});
        });
        let id = unique_name("hooks-runc-ci");
        quiet(
            runc.cmd()
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id),
        );
        made.push((id, record));
    }
    let leases = sim.leases();
    assert_eq!(leases.len(), 2, "{leases:?}\nlog:\n{}", sim.log());
    assert_eq!(leases[0].gi, leases[1].gi, "one GPU instance");
    assert_ne!(leases[0].mig_uuid, leases[1].mig_uuid);
    assert_eq!(sim.instances().len(), 1);
    for (id, record) in &made {
        let saw = fs::read_to_string(record).unwrap().trim().to_string();
        let l = leases
            .iter()
            .find(|l| matches!(&l.holder, Holder::Container { id: c, .. } if c == id))
            .unwrap();
        assert_eq!(
            (saw.as_str(), l.profile.as_str()),
            (l.mig_uuid.as_str(), "1c.3g.40gb")
        );
    }
    for (id, _) in &made {
        quiet(runc.cmd().args(["start", id]));
        wait_stopped(&runc, id);
        quiet(runc.cmd().args(["delete", id]));
    }
    assert!(sim.settled_leases().is_empty(), "log:\n{}", sim.log());
    assert!(
        sim.instances().is_empty(),
        "the sharing GPU instance went with its last compute instance"
    );
}

/// A slow destroy (the simulated driver's latency model: 3 s per GPU-instance destroy) never holds up `runc delete`
/// (issue 23): poststop marks the lease draining, leaves the destroy to a detached `migrun __finish-release` and
/// returns; the worker finishes it alone. Killed at its claim (kill -9), the worker leaves the instance releasing: the
/// next request of its profile takes it over instead of a destroy and a create; nothing leaks, nothing is lost.
/// Ordering, not timing, is asserted.
#[test]
fn a_slow_destroy_never_holds_up_delete_and_finishes_in_the_background() {
    for crash in [false, true] {
        let sim = Sim::new("h100-80gb:1");
        run_ok(sim.migrun().args(["sim", "latency", "destroy-gi=3000"]));
        let runc = Runc::new();
        let t = tempfile::tempdir().unwrap();
        let record = t.path().join("nvidia-saw");
        // With the crash, poststop waits for its worker (`release_wait_ms`), so the worker is dead (its claim no
        // longer in flight) when delete returns; without it, the default: delete never waits.
        let wait_cfg = t.path().join("wait.toml");
        fs::write(&wait_cfg, "release_wait_ms = 10000\n").unwrap();
        let bundle = hooked_bundle(&sim, t.path(), &record, |s| {
            s["annotations"] = json!({"migrun.profile": "1g.10gb"});
            if crash {
                // The worker inherits poststop's env; poststop itself never reaches this step (it claims nothing).
                let env = s["hooks"]["poststop"][0]["env"].as_array_mut().unwrap();
                env.push(json!("MIGRUN_TEST_CRASH_AT=release-after-claim"));
                env.push(json!(format!("MIGRUN_CONFIG={}", wait_cfg.display())));
            }
        });
        let id = unique_name("hooks-slow");
        quiet(
            runc.cmd()
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id),
        );
        assert_eq!(sim.leases().len(), 1, "log:\n{}", sim.log());
        quiet(runc.cmd().args(["start", &id]));
        wait_stopped(&runc, &id);
        quiet(runc.cmd().args(["delete", &id]));
        // delete is back while the 3 s destroy still runs (or its worker was killed): the lease is draining.
        let leases = sim.leases();
        assert_eq!(leases.len(), 1, "log:\n{}", sim.log());
        assert_eq!(leases[0].state, migrun::lease::LeaseState::Draining);
        if crash {
            // The worker died at its claim: the instance is still whole and releasing, so the next request of its
            // profile takes it over (same MIG device, nothing destroyed or made), and its release ends it.
            let out = run_ok(sim.migrun().args(["alloc", "--profile", "1g.10gb"]));
            assert!(
                out.starts_with(&leases[0].mig_uuid),
                "{out} / {:?}",
                leases[0]
            );
            let now = sim.leases();
            assert_eq!(now.len(), 1, "{now:?}");
            assert_eq!(now[0].state, migrun::lease::LeaseState::Active);
            let id = now[0].id.to_string();
            run_ok(sim.migrun().args(["release", &id]));
            // A worker killed with nothing to take over leaves the draining lease to gc, which finishes it.
            run_ok(sim.migrun().arg("gc"));
        }
        let t0 = Instant::now();
        while !(sim.leases().is_empty() && sim.instances().is_empty()) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the background destroy never finished; log:\n{}",
                sim.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `runc create` then `start` of `bundle` under a fresh id (named after `prefix`), back once its process has exited;
/// the container is left for the caller's `delete` (where poststop runs).
fn run_until_stopped(runc: &Runc, bundle: &Path, prefix: &str) -> String {
    let id = unique_name(prefix);
    quiet(runc.cmd().args(["create", "--bundle"]).arg(bundle).arg(&id));
    quiet(runc.cmd().args(["start", &id]));
    wait_stopped(runc, &id);
    id
}

#[test]
fn a_containers_end_never_opens_the_driver() {
    // With a 3 s driver init, poststop (runc delete) would take 3 s if it opened the driver; it decides from migrun's
    // records alone and leaves the driver to its background worker (alloc::detached).
    let sim = Sim::new("h100-80gb:1");
    let runc = Runc::new();
    let t = tempfile::tempdir().unwrap();
    let record = t.path().join("nvidia-saw");
    let bundle = hooked_bundle(&sim, t.path(), &record, |s| {
        s["annotations"] = json!({"migrun.profile": "1g.10gb"});
    });
    let id = run_until_stopped(&runc, &bundle, "hooks-noinit");
    run_ok(sim.migrun().args(["sim", "latency", "init=3000"]));
    let t0 = Instant::now();
    quiet(runc.cmd().args(["delete", &id]));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "runc delete took {took:?}: poststop waited for the driver; log:\n{}",
        sim.log()
    );
    run_ok(sim.migrun().args(["sim", "latency", "off"]));
    assert!(sim.settled_leases().is_empty(), "log:\n{}", sim.log());
    assert!(sim.instances().is_empty(), "the worker destroyed it");
}

#[test]
fn poststop_killed_after_marking_the_end_leaves_a_draining_lease_that_gc_finishes() {
    for step in migrun::alloc::testhook::END_STEPS {
        let sim = Sim::new("h100-80gb:1");
        let runc = Runc::new();
        let t = tempfile::tempdir().unwrap();
        let record = t.path().join("nvidia-saw");
        let bundle = hooked_bundle(&sim, t.path(), &record, |s| {
            s["annotations"] = json!({"migrun.profile": "1g.10gb"});
            s["hooks"]["poststop"][0]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!(format!("MIGRUN_TEST_CRASH_AT={step}")));
        });
        let id = run_until_stopped(&runc, &bundle, "hooks-endcrash");
        // runc only warns when a poststop hook fails.
        let _ = runc.cmd().args(["delete", &id]).output();
        let leases = sim.leases();
        assert_eq!(leases.len(), 1, "{step}: log:\n{}", sim.log());
        assert_eq!(
            leases[0].state,
            migrun::lease::LeaseState::Draining,
            "{step}"
        );
        assert_eq!(sim.instances().len(), 1, "{step}: no worker ran");
        run_ok(sim.migrun().arg("gc"));
        assert!(sim.leases().is_empty(), "{step}: log:\n{}", sim.log());
        assert!(sim.instances().is_empty(), "{step}: gc destroyed it");
    }
}
