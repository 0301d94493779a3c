//! migrun's benchmarks as a crate of their own (placement quality, start-up overhead; the `src/bin/*-bench.rs` binaries stay thin); the product never depends on it.

pub mod latency;
pub mod metrics;
pub mod overhead;
pub mod placement;
