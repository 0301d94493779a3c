//! Operating a shared box over time: usage reports from the ledger (`usage`) and the Prometheus metrics
//! (`metrics`); it reads the device, the lease registry, the counters and the ledger, and must not change
//! any of them, plan, or name an engine.
//!
//! The ledger and the counters are written by the allocator (`alloc::account`) and the lease registry; this
//! room only reads them. docs/operations.md explains every figure.

pub mod metrics;
pub mod usage;
