//! Concurrency on the simulator: 64 `migrun alloc --profile 1g.10gb` processes at once on an
//! h100-80gb:8 (56 slots). The same scenarios run through the fake NVML in tests/alloc_fake_nvml.rs.

mod alloc_support;

use alloc_support::{scenarios, Sim};
use std::sync::Arc;

#[test]
fn sixty_four_at_once_exactly_fifty_six_win() {
    scenarios::race_64(&Sim::new("h100-80gb:8"));
}

#[test]
fn with_wait_all_sixty_four_are_served() {
    scenarios::wait_64(Arc::new(Sim::new("h100-80gb:8")));
}

#[test]
fn creates_run_outside_the_lock() {
    scenarios::creates_run_outside_the_lock(&Sim::new("h100-80gb:1"));
}
