//! The pure policy room: (snapshot, leases, request) -> plan or a no-room explanation; it must not do I/O.
//!
//! - [`plan`]: what a request asks for (`Want`, `PlanRequest`), reuse a free instance or create one
//!   (`plan()`), which kept instances to evict for room, which GPU a waiter holds back;
//! - [`no_room`]: why nothing fits now, per GPU, and what would fit instead;
//! - [`ci_plan`]: a compute instance into a sharing GPU instance or a new one (issue 22);
//! - [`placement`]: where to create (migrun's policy and the first-fit baseline the benchmarks compare).
//!
//! Everything here is a function of its arguments: plain-data `MigState` and lease records in, a plan
//! out. It reads no file, takes no lock, asks no clock and never names the on-disk registry or the
//! allocator that applies its plans (tests/layers.rs checks this).

pub mod ci_plan;
pub mod no_room;
pub mod placement;
pub mod plan;
#[cfg(test)]
mod test_support;

pub use no_room::{GpuNoRoom, NoRoom, Why};
pub use plan::Owner;
pub(crate) use plan::{Plan, PlanRequest, Want};
