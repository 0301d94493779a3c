//! migrun's library: every room of the program; `main.rs` only parses, calls [`run`] and maps errors to exit codes.
//!
//! How a request flows (see docs/design.md):
//! `profile` (what was asked) -> `gpu::Backend::snapshot` (plain-data state) -> `placement::plan`
//! (pure policy) -> `lease` (locked registry, intent journal) -> `alloc::apply` (create GI + CI,
//! roll back on failure) -> an engine (`engine::docker` launcher, `engine::oci` hooks,
//! `engine::runtime` shim) runs the container -> `alloc::release` gives it back.

pub mod alloc;
pub mod caller;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod exit;
pub mod gpu;
pub mod lease;
pub mod man;
pub mod migmode;
pub mod out;
pub mod policy;
pub mod profile;
pub mod statedir;

pub use commands::run;
