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

use crate::config::Config;
use crate::gpu::{Backend, GpuError};
use crate::lease::LeaseId;
use crate::statedir::StateDir;

/// Errors of allocation and release.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("{0} is not implemented yet")]
    NotYet(&'static str),
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    /// The instance migrun created was destroyed (CI, then GI).
    Destroyed { lease: LeaseId, mig_uuid: String },
    /// The lease was dropped; the instance stays (foreign, or kept warm by policy).
    Kept {
        lease: LeaseId,
        mig_uuid: String,
        why: String,
    },
    /// The instance was busy; the lease is draining and gc finishes the job.
    Draining { lease: LeaseId, mig_uuid: String },
    /// Nothing to do (no lease for that container: poststop is idempotent).
    NoLease,
}

/// What gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub released: Vec<ReleaseOutcome>,
    /// Instances created by a crashed allocation (journaled intent, no lease) that gc destroyed.
    pub repaired: Vec<String>,
    pub notes: Vec<String>,
}

/// Allocate: reclaim stale leases, then reuse a free instance or create one, and record the lease.
pub fn allocate(
    _backend: &mut dyn Backend,
    _dir: &StateDir,
    _config: &Config,
    _req: &AllocRequest,
    _probe: &dyn HolderProbe,
) -> Result<Lease, AllocError> {
    Err(AllocError::NotYet("allocation"))
}

/// Release by lease id or MIG UUID. `caller_uid` is the invoking user under sudo (only their own leases), `None` for plain root.
pub fn release(
    _backend: &mut dyn Backend,
    _dir: &StateDir,
    _config: &Config,
    _target: &str,
    _caller_uid: Option<u32>,
) -> Result<ReleaseOutcome, AllocError> {
    Err(AllocError::NotYet("release"))
}

/// Release the lease held by container `id` (poststop, shim, launcher). Idempotent: no lease -> `NoLease`.
pub fn release_container(
    _backend: &mut dyn Backend,
    _dir: &StateDir,
    _config: &Config,
    _container_id: &str,
) -> Result<ReleaseOutcome, AllocError> {
    Err(AllocError::NotYet("release by container"))
}

/// Change a lease's holder (the launcher hands its lease from its own pid to the container).
pub fn set_holder(_dir: &StateDir, _lease: LeaseId, _holder: Holder) -> Result<(), AllocError> {
    Err(AllocError::NotYet("set_holder"))
}

/// Every lease, for status.
pub fn leases(_dir: &StateDir) -> Result<Vec<Lease>, AllocError> {
    Ok(Vec::new())
}

/// Release leases whose holder is gone, finish draining ones, repair crashed allocations.
pub fn gc(
    _backend: &mut dyn Backend,
    _dir: &StateDir,
    _config: &Config,
    _probe: &dyn HolderProbe,
) -> Result<GcReport, AllocError> {
    Err(AllocError::NotYet("gc"))
}
