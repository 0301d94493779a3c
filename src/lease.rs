//! The lease registry in the state dir: lock, intent journal, atomic lease records, holder liveness data; it must not call NVML.
//!
//! Layout (all files 0600 inside the 0700 state dir, written atomically):
//! `alloc.lock` (serialises every allocation and release), `leases/<id>.json`, `intents/<id>.json`,
//! `next-id`.

use crate::gpu::Placement;
use serde::{Deserialize, Serialize};

/// A lease id (small integers, printed as `lease 7`).
pub type LeaseId = u64;

/// Who holds a lease; gc releases leases whose holder is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Holder {
    /// A process: alive while `pid` exists with the same start time (guards against pid reuse).
    Process { pid: u32, start_time: u64 },
    /// A container: alive while its engine still knows it (and, when known, its init process lives).
    Container {
        id: String,
        /// `docker`, `podman`, `runc`, `containerd`, `cri-o` …
        engine: String,
        /// Init pid and its start time, when the engine told us (prestart state JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<(u32, u64)>,
    },
    /// `migrun alloc` without `--holder-pid`: released only by `migrun release`.
    Manual,
}

/// The life stage of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    Active,
    /// Released, but the instance was busy (IN_USE); gc finishes destroying it.
    Draining,
}

/// One lease record (`leases/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub id: LeaseId,
    pub holder: Holder,
    /// The uid the lease is charged to (SUDO_UID when run under sudo).
    pub uid: u32,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    pub ci: u32,
    pub profile_id: u32,
    /// Short profile name, for people (`3g.40gb`).
    pub profile: String,
    pub placement: Placement,
    pub mig_uuid: String,
    /// True when migrun created the instance (only then may migrun destroy it).
    pub created: bool,
    /// Keep the instance when the lease ends, instead of destroying it.
    pub keep: bool,
    pub state: LeaseState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(_e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    None
}
