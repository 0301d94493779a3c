//! How a release ended ([`ReleaseOutcome`]) and what gc did ([`GcReport`]), as `release`, gc's report and the hooks print them; it must not act on anything.

use crate::lease::LeaseId;

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
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
    /// The lease ended and its instance is being destroyed by a detached worker (`migrun __finish-release`), so the
    /// container's end does not wait for the driver; gc finishes it if the worker stops.
    Releasing { lease: LeaseId, mig_uuid: String },
    /// Nothing to do (no lease for that container: poststop is idempotent).
    NoLease,
    /// The lease was dropped because its instance no longer exists (destroyed outside migrun).
    Gone { lease: LeaseId, mig_uuid: String },
}

impl ReleaseOutcome {
    /// A lease whose instance no longer exists was dropped: `Destroyed` when it was draining (our own interrupted
    /// destroy, or an admin's: either way it is gone now), `Gone` when it was still active.
    pub(super) fn vanished(was_draining: bool, lease: LeaseId, mig_uuid: String) -> ReleaseOutcome {
        if was_draining {
            ReleaseOutcome::Destroyed { lease, mig_uuid }
        } else {
            ReleaseOutcome::Gone { lease, mig_uuid }
        }
    }

    /// The lease this release ended, if any.
    pub(crate) fn lease(&self) -> Option<LeaseId> {
        match self {
            ReleaseOutcome::Destroyed { lease, .. }
            | ReleaseOutcome::Kept { lease, .. }
            | ReleaseOutcome::Draining { lease, .. }
            | ReleaseOutcome::Releasing { lease, .. }
            | ReleaseOutcome::Gone { lease, .. } => Some(*lease),
            ReleaseOutcome::NoLease => None,
        }
    }
}

impl std::fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseOutcome::Destroyed { lease, mig_uuid } => {
                write!(f, "lease {lease} released; {mig_uuid} destroyed")
            }
            ReleaseOutcome::Kept {
                lease,
                mig_uuid,
                why,
            } => write!(f, "lease {lease} released; {mig_uuid} kept ({why})"),
            ReleaseOutcome::Draining { lease, mig_uuid } => write!(
                f,
                "lease {lease} released; {mig_uuid} is still in use, so it is draining: `migrun gc` destroys it once its processes end"
            ),
            ReleaseOutcome::Releasing { lease, mig_uuid } => write!(
                f,
                "lease {lease} released; {mig_uuid} is being destroyed in the background (`migrun gc` finishes it if that stops)"
            ),
            ReleaseOutcome::NoLease => f.write_str("no lease to release"),
            ReleaseOutcome::Gone { lease, mig_uuid } => write!(
                f,
                "lease {lease} dropped; {mig_uuid} no longer exists (destroyed outside migrun)"
            ),
        }
    }
}

/// What gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct GcReport {
    pub released: Vec<ReleaseOutcome>,
    /// Instances created by a crashed allocation (journaled intent, no lease) that gc destroyed.
    pub repaired: Vec<String>,
    pub notes: Vec<String>,
    /// Instances of dead holders' leases destroyed (for the metrics counters).
    #[serde(skip)]
    pub destroyed: u64,
    /// Instances of draining leases finally destroyed (for the metrics counters).
    #[serde(skip)]
    pub drained: u64,
}

impl GcReport {
    /// Add what another part of the same gc did.
    pub(super) fn merge(&mut self, other: GcReport) {
        self.released.extend(other.released);
        self.repaired.extend(other.repaired);
        self.notes.extend(other.notes);
        self.destroyed += other.destroyed;
        self.drained += other.drained;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.released.is_empty() && self.repaired.is_empty() && self.notes.is_empty()
    }
}
