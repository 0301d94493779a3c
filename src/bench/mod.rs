//! Benchmark programs' logic (the `src/bin/*-bench.rs` binaries stay thin); it must not be used by the product's commands.

pub mod overhead;
pub mod placement;
