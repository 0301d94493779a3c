//! The key allocation scenarios again, through the real NVML backend on the fake `libnvidia-ml.so`:
//! concurrency, crash safety, partial failure (the fake's own fault injection) and ownership.

mod alloc_support;
mod common;

use alloc_support::{scenarios, Sim};
use common::fake_nvml::FakeNvml;
use std::sync::Arc;

/// A machine behind the fake NVML, with its state file on a tmpfs like the rest of the test state.
fn fake(spec: &str) -> Sim {
    let dir = alloc_support::fast_tempdir();
    let state = dir.path().join("fake-nvml.json");
    let f = FakeNvml::new(spec).with_var("MIGRUN_FAKE_NVML_STATE", &state.display().to_string());
    Sim::through(spec, f.env(), state, Box::new((f, dir)))
}

fn h100() -> Sim {
    fake("h100-80gb")
}

#[test]
fn status_goes_through_nvml_not_the_simulator() {
    let sim = h100();
    let out = sim.cmd(&["status"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !sim.state_dir().join("sim.json").exists(),
        "no --simulate machine was made: the fake library answered"
    );
}

#[test]
fn sixty_four_at_once_exactly_fifty_six_win() {
    scenarios::race_64(&fake("h100-80gb:8"));
}

#[test]
fn creates_run_outside_the_lock() {
    scenarios::creates_run_outside_the_lock(&fake("h100-80gb:1"));
}

#[test]
fn with_wait_all_sixty_four_are_served() {
    scenarios::wait_64(Arc::new(fake("h100-80gb:8")));
}

#[test]
fn killed_during_allocate_then_gc_repairs() {
    scenarios::killed_during_allocate(&h100, true);
}

#[test]
fn killed_during_release_then_gc_finishes_it() {
    scenarios::killed_during_release(&h100);
}

#[test]
fn killed_while_evicting_a_kept_instance_then_gc_finishes() {
    scenarios::killed_while_evicting(&h100);
}

#[test]
fn injected_ci_failure_leaves_no_gi_and_says_what_happened() {
    scenarios::ci_failure_leaves_nothing(&h100(), &scenarios::FAKE_NVML_FAULTS);
}

#[test]
fn foreign_instances_are_reused_never_destroyed_and_busy_ones_are_left_alone() {
    scenarios::ownership(&h100());
}

#[test]
fn killed_while_gc_destroys_outside_the_lock_then_gc_finishes() {
    scenarios::killed_during_gc_destroys(&h100);
}
