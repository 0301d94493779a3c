//! A container's end without the driver (issue 23): poststop and the shim's release after the engine's `delete` journal
//! the end of a lease under the lock and return, leaving every driver call to the detached worker
//! (`migrun __finish-release`); it must not open the backend, and it leaves any case it cannot decide from migrun's
//! own records to the full release ([`super::release_if`]).
//!
//! Why: on a real GPU opening the driver alone costs 10 to 15 ms (`nvmlInit`, then the device handles; 16 ms measured
//! on the lent H200), and the snapshot a release takes adds a list per GPU. A container's end paid both before it
//! could mark the lease draining, though the worker it then starts opens the driver again to destroy. Here the end
//! decides from the records alone: the lease (still the caller's, active, a whole GPU instance) and the created/
//! record that names exactly its instance (what [`super::reconcile::begin_end`] asks before any destroy). A kept
//! instance gets its idle time stamped and stays; any other is marked draining, and the worker takes a snapshot,
//! claims the destroy and makes it outside the lock, or finds the instance busy or gone, as after any release.

use super::reconcile::{keeps, mark_idle, record_of};
use super::share_end::recorded_as_shared;
use super::testhook::crash_point;
use super::{AllocError, ReleaseOutcome};
use crate::config::Config;
use crate::lease::ledger::EndReason;
use crate::lease::{self, Lease, LeaseId, LeaseState, Registry};
use crate::statedir::StateDir;

/// What [`end_without_driver`] did.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Done from the records: `Releasing` (the caller starts the worker), `Kept`, or `NoLease`.
    Done(ReleaseOutcome),
    /// The records alone cannot decide (a lease already draining, an instance no created/ record names, a kept one
    /// while a metrics textfile is kept current): the caller runs the full release.
    NeedsDriver,
}

/// End lease `id` for a container's end if `holds` says, under the lock, that it is still the caller's; no driver
/// call. `simulated` picks the usage ledger's default place, as the backend kind does elsewhere.
pub(crate) fn end_without_driver(
    dir: &StateDir,
    config: &Config,
    simulated: bool,
    id: LeaseId,
    holds: &dyn Fn(&Lease) -> bool,
) -> Result<Ended, AllocError> {
    let reg =
        Registry::open(dir)?.with_ledger(Some(super::ledger_of(dir.path(), config, simulated)));
    let _lock = reg.lock()?;
    let Some(mut l) = reg.lease(id)?.filter(|l| holds(l)) else {
        return Ok(Ended::Done(ReleaseOutcome::NoLease));
    };
    // A draining lease is a worker's or gc's already; a lease no created/ record backs (for a compute instance: the
    // record of migrun's sharing GPU instance) is judged against the driver's view.
    if l.state != LeaseState::Active {
        return Ok(Ended::NeedsDriver);
    }
    let ci = l.ci_profile.is_some();
    // The record is read once: a kept instance's is stamped idle below.
    let record = if ci || !l.created {
        None
    } else {
        record_of(&reg, &l)?
    };
    let backed = if ci {
        recorded_as_shared(&reg, &l)?
    } else {
        record.is_some()
    };
    if !backed {
        return Ok(Ended::NeedsDriver);
    }
    // A compute instance always goes (with `keep`, only its emptied GPU instance stays): the worker decides what goes
    // with it (share_end), as a release does.
    let keep = !ci && keeps(&l, config);
    // The textfile is refreshed from a snapshot; for a kept instance no worker comes after this to refresh it.
    if keep && config.metrics_textfile.is_some() {
        return Ok(Ended::NeedsDriver);
    }
    // The ledger hears of the end before any record changes (as in begin_end).
    reg.log_end(&l, EndReason::Released);
    if keep {
        reg.remove_lease(l.id)?;
        // Whether the instance is still whole is asked when it is next reused or expired (`record_matches` against a
        // snapshot), as for any kept record.
        if let Some(r) = record {
            mark_idle(&reg, r)?;
        }
        return Ok(Ended::Done(ReleaseOutcome::Kept {
            lease: l.id,
            mig_uuid: l.mig_uuid,
            why: "kept warm for reuse (--keep or config release = \"keep\")".into(),
        }));
    }
    l.state = LeaseState::Draining;
    l.updated_at = lease::now();
    reg.write_lease(&l)?;
    crash_point("end-after-mark-draining");
    Ok(Ended::Done(ReleaseOutcome::Releasing {
        lease: l.id,
        mig_uuid: l.mig_uuid,
    }))
}
