//! Applies placement plans through the hardware trait, rolls back, releases and collects garbage; it must not parse engine formats.
//!
//! Engines tell this module whether a container holder is still alive through [`HolderProbe`], so
//! gc never needs to know docker, podman or containerd.

use crate::lease::{Holder, Lease};
use crate::profile::ProfileSpec;
use std::time::Duration;

/// What to allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Profile(ProfileSpec),
    /// Smallest plain profile with at least this many MiB (`--min-mem`).
    MinMemMib(u64),
}

/// An allocation request, already validated by the caller.
#[derive(Debug, Clone)]
pub struct AllocRequest {
    pub want: Want,
    /// `--gpu` as given (index or UUID), resolved against the snapshot.
    pub gpu: Option<String>,
    /// `None`: fail at once when there is no room; `Some(None)`: wait forever; `Some(Some(d))`: wait up to d.
    pub wait: Option<Option<Duration>>,
    /// Keep a created instance when the lease ends.
    pub keep: bool,
    pub holder: Holder,
    /// Uid charged with the lease.
    pub uid: u32,
}

/// Tells gc whether a container holder still exists (implemented by the engines).
pub trait HolderProbe {
    /// `Some(true)` alive, `Some(false)` gone, `None` unknown (engine unreachable: keep the lease).
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool>;
}

/// What a finished allocation hands back.
pub type Allocated = Lease;

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(_e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    None
}
