//! migrun's library: every room of the program; `main.rs` only parses, calls [`run`] and maps errors to exit codes.
//!
//! How a request flows (see docs/design.md):
//! `profile` (what was asked) -> `gpu::Backend::snapshot` (plain-data state) -> `alloc` reconciles the
//! `lease` records under the registry's lock -> `policy::plan::plan` (pure: reuse, or create where
//! `policy::placement` says, or why there is no room) -> `alloc::apply` (intent, GI + CI, lease; roll
//! back on failure) -> an engine (`engine::docker` launcher, `engine::oci` hooks, `engine::runtime`
//! shim) runs the container -> `alloc::release` gives it back.
//!
//! Rooms name only rooms below them (tests/layers.rs checks these directions): the leaves `exit`, `out`, `profile`,
//! `statedir` -> `gpu` -> `lease` (records, then `lease::Registry` on disk) -> `policy` (pure, no I/O,
//! no clock) -> `alloc` (never an engine: `alloc::HolderProbe`) -> `engine` -> the edge `cli`,
//! `commands`, `man`. `config`, `caller` and `migmode` sit beside `alloc`.

pub mod alloc;
pub mod caller;
pub mod cdi;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod exit;
pub mod gpu;
pub mod lease;
pub mod man;
pub mod migmode;
pub mod ops;
pub mod out;
pub mod policy;
pub mod profile;
pub mod statedir;

pub use commands::run;
