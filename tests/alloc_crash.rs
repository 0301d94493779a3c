//! Crash safety: a migrun process killed (SIGKILL) at every step of allocate and of release leaves
//! nothing that `migrun gc` (or the next allocation) cannot repair; and partial failure of a create
//! leaves no GPU instance behind. Uses the debug-build hooks MIGRUN_TEST_CRASH_AT / MIGRUN_TEST_FAIL.

mod alloc_support;

use alloc_support::{check_invariants, instances, leases, Sim};
use std::os::unix::process::ExitStatusExt;

/// Must match `migrun::alloc::testhook::{ALLOC_STEPS, RELEASE_STEPS}` (checked below).
const ALLOC_STEPS: &[&str] = migrun::alloc::testhook::ALLOC_STEPS;
const RELEASE_STEPS: &[&str] = migrun::alloc::testhook::RELEASE_STEPS;
const EVICT_STEPS: &[&str] = migrun::alloc::testhook::EVICT_STEPS;

fn crash(sim: &Sim, step: &str, args: &[&str]) {
    let out = sim
        .cmd(args)
        .env("MIGRUN_TEST_CRASH_AT", step)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "migrun {args:?} should have been killed at {step}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A machine with one lease already (so repairs must leave other leases alone).
fn machine() -> (Sim, String) {
    let sim = Sim::new("h100-80gb");
    let (keep, _) = sim.alloc(&["--profile", "2g.20gb"]);
    (sim, keep)
}

fn assert_untouched(sim: &Sim, keep: &str) {
    let status = sim.status();
    assert!(
        leases(&status).iter().any(|l| l["mig_uuid"] == keep),
        "the other lease survived"
    );
}

#[test]
fn every_step_names_a_real_crash_point() {
    assert_eq!(ALLOC_STEPS.len(), 6);
    assert!(ALLOC_STEPS.contains(&"after-create-gi"));
    assert_eq!(RELEASE_STEPS.len(), 4);
}

#[test]
fn killed_during_allocate_then_gc_repairs() {
    for step in ALLOC_STEPS {
        let (sim, keep) = machine();
        crash(&sim, step, &["alloc", "--profile", "3g.40gb"]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert_untouched(&sim, &keep);
        // Either the allocation completed (its lease was written) or nothing of it is left.
        let n = leases(&status).len();
        assert_eq!(instances(&status).len(), n, "after {step}: {gc}");
        if *step == "after-write-lease" {
            assert_eq!(n, 2, "the lease was written before the crash");
        } else {
            assert_eq!(
                n, 1,
                "after {step} gc destroyed the half-made instance: {gc}"
            );
        }
        // And the machine works normally afterwards.
        let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
        sim.ok(&["release", &id.to_string()]);
        check_invariants(&sim.status(), true);
    }
}

#[test]
fn killed_during_allocate_then_next_allocation_repairs() {
    for step in ALLOC_STEPS {
        let (sim, keep) = machine();
        crash(&sim, step, &["alloc", "--profile", "3g.40gb"]);
        // No gc: the next allocation reconciles first. Both 3g.40gb placements are needed by now
        // only if the crashed one was repaired (2g.20gb holds one half).
        sim.alloc(&["--profile", "1g.10gb"]);
        check_invariants(&sim.status(), true);
        assert_untouched(&sim, &keep);
    }
}

#[test]
fn killed_during_release_then_gc_finishes_it() {
    for step in RELEASE_STEPS {
        let (sim, keep) = machine();
        let (uuid, id) = sim.alloc(&["--profile", "3g.40gb"]);
        crash(&sim, step, &["release", &id.to_string()]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert_untouched(&sim, &keep);
        assert_eq!(leases(&status).len(), 1, "after {step}: {gc}");
        assert!(
            instances(&status)
                .iter()
                .all(|(_, _, u)| u.as_deref() != Some(&*uuid)),
            "after {step} the released instance is destroyed: {gc}"
        );
        assert_eq!(instances(&status).len(), 1);
    }
}

#[test]
fn killed_while_evicting_a_kept_instance_then_gc_finishes() {
    for step in EVICT_STEPS {
        let sim = Sim::new("h100-80gb");
        std::fs::write(sim.config_path(), "release = \"keep\"\n").unwrap();
        // A kept 7g.80gb fills the GPU; a 1g.10gb request must evict it first.
        let (_, id) = sim.alloc(&["--profile", "7g.80gb"]);
        sim.ok(&["release", &id.to_string()]);
        assert_eq!(instances(&sim.status()).len(), 1);
        crash(&sim, step, &["alloc", "--profile", "1g.10gb"]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert!(instances(&status).is_empty(), "after {step}: {gc}");
        assert!(
            std::fs::read_dir(sim.state_dir().join("created"))
                .unwrap()
                .next()
                .is_none(),
            "no stale record after {step}"
        );
        sim.alloc(&["--profile", "1g.10gb"]);
    }
}

#[test]
fn injected_ci_failure_leaves_no_gi_and_says_what_happened() {
    let (sim, keep) = machine();
    let before = sim.snapshot_files();
    let out = sim
        .cmd(&["alloc", "--profile", "3g.40gb"])
        .env("MIGRUN_TEST_FAIL", "create-ci=INSUFFICIENT_RESOURCES")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("creating the default compute instance in GI")
            && err.contains("3g.40gb at placement")
            && err.contains("INSUFFICIENT_RESOURCES")
            && err.contains("the GPU instance was destroyed again, nothing is left behind"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let status = sim.status();
    check_invariants(&status, true);
    assert_eq!(instances(&status).len(), 1, "no GI left behind");
    assert_untouched(&sim, &keep);
    // Only the lease counter moved.
    let after = sim.snapshot_files();
    let changed: Vec<_> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| !k.ends_with("next-id") && !k.ends_with("sim.json"))
        .collect();
    assert!(changed.is_empty(), "{changed:?}");

    // When destroying the GI fails as well, the error says so and gc cleans up.
    let out = sim
        .cmd(&["alloc", "--profile", "3g.40gb"])
        .env("MIGRUN_TEST_FAIL", "create-ci,destroy-gi")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("also failed") && err.contains("migrun gc"),
        "{err}"
    );
    assert_eq!(instances(&sim.status()).len(), 2);
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains("repaired"), "{gc}");
    check_invariants(&sim.status(), true);
    assert_eq!(instances(&sim.status()).len(), 1);
}
