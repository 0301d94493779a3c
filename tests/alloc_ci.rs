//! Compute-instance slices (issue 22) on the simulator: three `1c.3g.40gb` share one `3g.40gb`, a fourth
//! goes to the next, every release order leaves nothing, 16 racing allocations never over-fill a GPU
//! instance, and a migrun killed at any step of a compute-instance allocation or release leaves nothing
//! gc cannot repair. The same scenarios run through the fake NVML in tests/nvml_ci.rs.

mod alloc_support;

use alloc_support::{ci_scenarios, Sim};

fn a100() -> Sim {
    Sim::new("a100-80gb")
}

#[test]
fn three_share_one_gpu_instance_and_a_fourth_goes_to_the_next() {
    ci_scenarios::three_fill_one_fourth_goes_next(&a100());
}

#[test]
fn releasing_in_every_order_leaves_nothing() {
    ci_scenarios::release_in_every_order(&a100);
}

#[test]
fn sixteen_at_once_never_over_fill_a_gpu_instance() {
    ci_scenarios::race_16(&Sim::new("a100-80gb:2"));
}

#[test]
fn killed_during_a_compute_instance_allocation_then_gc_repairs() {
    ci_scenarios::killed_during_ci_allocate(&a100, true);
    ci_scenarios::killed_during_ci_allocate(&a100, false);
}

#[test]
fn killed_during_a_compute_instance_release_then_gc_finishes_it() {
    ci_scenarios::killed_during_ci_release(&a100);
}
