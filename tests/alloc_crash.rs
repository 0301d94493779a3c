//! Crash safety on the simulator: a migrun process killed (SIGKILL) at every step of allocate, of
//! release and of an eviction leaves nothing that `migrun gc` (or the next allocation) cannot repair;
//! a failed create leaves no GPU instance behind. Uses the debug-build hooks MIGRUN_TEST_CRASH_AT and
//! MIGRUN_TEST_FAIL (docs/leases.md). The same scenarios run through the fake NVML in tests/alloc_fake_nvml.rs.

mod alloc_support;

use alloc_support::{scenarios, Sim};

fn h100() -> Sim {
    Sim::new("h100-80gb")
}

#[test]
fn every_step_names_a_crash_point() {
    use migrun::alloc::testhook::{ALLOC_STEPS, EVICT_STEPS, RELEASE_STEPS};
    assert_eq!(ALLOC_STEPS.len(), 7);
    assert!(ALLOC_STEPS.contains(&"after-create-gi"));
    assert_eq!(RELEASE_STEPS.len(), 5);
    assert_eq!(EVICT_STEPS.len(), 3);
    assert_eq!(migrun::alloc::testhook::GC_STEPS.len(), 3);
    assert_eq!(migrun::alloc::testhook::EXPIRE_STEPS.len(), 3);
    assert_eq!(migrun::alloc::testhook::TAKEOVER_STEPS.len(), 1);
}

#[test]
fn killed_during_allocate_then_gc_repairs() {
    scenarios::killed_during_allocate(&h100, true);
}

#[test]
fn killed_during_allocate_then_next_allocation_repairs() {
    scenarios::killed_during_allocate(&h100, false);
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
    scenarios::ci_failure_leaves_nothing(&h100(), &scenarios::SIM_FAULTS);
}

#[test]
fn foreign_instances_are_reused_never_destroyed_and_busy_ones_are_left_alone() {
    scenarios::ownership(&h100());
}

#[test]
fn killed_while_taking_over_a_releasing_instance_then_gc_keeps_it_reusable() {
    scenarios::killed_while_taking_over(&h100);
}

#[test]
fn killed_while_gc_destroys_outside_the_lock_then_gc_finishes() {
    scenarios::killed_during_gc_destroys(&h100);
}

#[test]
fn killed_while_expiring_a_kept_instance_then_gc_finishes() {
    scenarios::killed_while_expiring(&h100);
}

#[test]
fn gc_destroys_run_outside_the_lock() {
    scenarios::gc_destroys_run_outside_the_lock(&h100());
}
