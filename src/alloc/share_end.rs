//! Ending compute-instance leases and repairing interrupted compute-instance allocations (issue 22), with every
//! driver call outside the allocation lock (issue 23): under the lock the compute instance's destroy is claimed, the
//! compute instance destroyed without it, then under the lock again the sharing GPU instance is claimed too if
//! nothing is left in it, and destroyed without the lock. It must not plan or name an engine.
//!
//! Only migrun's own sharing record licenses destroying anything in a GPU instance, and a compute instance is
//! destroyed only by the lease or the intent that names its id.

use super::drain::{gi_empty, lock_unless, unclaim, CiJob, Job, Kind, Purpose};
use super::reconcile::{forget_record, keeps, lease_whole, Step};
use super::repair::drop_unbound_intent;
use super::share::{on_gi, shared_instance};
use super::testhook::crash_point;
use super::{AllocError, ReleaseOutcome};
use crate::config::Config;
use crate::gpu::{Backend, Code, MigState};
use crate::lease::ledger::EndReason;
use crate::lease::{self, CiIntent, Intent, Lease, LeaseState, Registry};

/// Does a created/ record of migrun's own sharing GPU instance name the GPU instance of compute-instance lease `l`?
pub(super) fn recorded_as_shared(reg: &Registry, l: &Lease) -> Result<bool, AllocError> {
    Ok(l.created
        && reg.created()?.iter().any(|r| {
            r.shared
                && r.gpu_uuid == l.gpu_uuid
                && r.gi == l.gi
                && r.profile_id == l.profile_id
                && r.placement == l.placement
        }))
}

/// Begin ending a compute-instance lease (under the lock): drop a lease that is not migrun's, mark it draining, and
/// claim the destroy of its compute instance (then of the sharing GPU instance once nothing is left in it), which
/// `drain::run` makes after the lock is dropped ([`run_ci`]).
pub(super) fn begin_end(
    reg: &Registry,
    config: &Config,
    state: &mut MigState,
    mut l: Lease,
    reason: EndReason,
    purpose: Purpose,
) -> Result<Step, AllocError> {
    let mig_uuid = l.mig_uuid.clone();
    if l.state == LeaseState::Active {
        reg.log_end(&l, reason);
    }
    // Only migrun's own sharing record licenses destroying anything in this GPU instance.
    let ours = recorded_as_shared(reg, &l)?;
    if !ours {
        tracing::warn!(lease = l.id, mig = %l.mig_uuid, "compute-instance lease without a matching sharing record; not destroying");
        let whole = lease_whole(state, &l);
        reg.remove_lease(l.id)?;
        return Ok(Step::Done(if whole {
            ReleaseOutcome::Kept {
                lease: l.id,
                mig_uuid,
                why: "no created/ record of a sharing GPU instance matches it, so migrun leaves it alone".into(),
            }
        } else {
            ReleaseOutcome::Gone {
                lease: l.id,
                mig_uuid,
            }
        }));
    }
    let was_draining = l.state == LeaseState::Draining;
    if !was_draining {
        l.state = LeaseState::Draining;
        l.updated_at = lease::now();
        reg.write_lease(&l)?;
        crash_point("release-after-mark-draining");
    }
    let others = reg
        .leases()?
        .into_iter()
        .any(|o| o.id != l.id && o.gpu_uuid == l.gpu_uuid && o.gi == l.gi);
    let Some((g, i)) = shared_instance(state, &l.gpu_uuid, l.gi, l.profile_id, l.placement)
        .map(|(g, i)| (g.clone(), i.clone()))
    else {
        if !others {
            reg.remove_created(&l.gpu_uuid, l.gi)?;
        }
        reg.remove_lease(l.id)?;
        return Ok(Step::Done(ReleaseOutcome::vanished(
            was_draining,
            l.id,
            mig_uuid,
        )));
    };
    // Its own compute instance: the CI id it recorded, with its MIG UUID (never a re-created one).
    let own = i
        .compute_instances
        .iter()
        .find(|c| c.id == l.ci && c.mig_uuid == l.mig_uuid);
    if own.is_some_and(|c| c.processes > 0) {
        return Ok(Step::Done(ReleaseOutcome::Draining {
            lease: l.id,
            mig_uuid,
        }));
    }
    // The claim names the lease's compute instance: a crash leaves it to gc, which finds the draining lease holding
    // it and finishes the release.
    let claim = super::drain::lease_claim(
        &l,
        g.info.index,
        Some(CiIntent {
            new_gi: false,
            profile_id: None,
            start: None,
            id: Some(l.ci),
        }),
    );
    reg.write_intent(&claim)?;
    let gi_may_go = !keeps(&l, config);
    Ok(Step::Claimed(Box::new(Job {
        claim,
        restore: None,
        kind: Kind::Ci(Box::new(CiJob {
            gpu: g.info.index,
            gpu_uuid: l.gpu_uuid.clone(),
            gi: l.gi,
            ci: own.map(|c| c.id),
            lease: Some(l),
            gi_may_go,
        })),
        purpose,
    })))
}

/// How [`run_ci`] runs: its claim, the intent to put back if nothing can be destroyed now, and whether the caller
/// holds the lock already.
pub(super) struct CiRun {
    pub claim: Intent,
    pub restore: Option<Intent>,
    pub locked: bool,
}

/// Make a claimed compute-instance destroy (the lock not held): the compute instance, then, decided under the lock,
/// the sharing GPU instance if nothing is left in it (claimed again for that, and destroyed without the lock). A
/// lease's end is returned; a repair's goes into `report`.
pub(super) fn run_ci(
    backend: &mut dyn Backend,
    reg: &Registry,
    run: CiRun,
    job: CiJob,
    report: &mut super::GcReport,
) -> Result<Option<ReleaseOutcome>, AllocError> {
    let CiRun {
        claim,
        restore,
        locked,
    } = run;
    let CiJob {
        gpu,
        gpu_uuid,
        gi,
        ci,
        lease,
        gi_may_go,
    } = job;
    if lease.is_some() {
        crash_point("release-after-claim");
    }
    let head = format!(
        "compute instance {} of GPU {gpu} GI {gi} ({} at {}), left by an interrupted allocation (lease {})",
        ci.map_or("-".to_string(), |c| c.to_string()),
        claim.profile,
        claim.placement,
        claim.lease
    );
    let mut busy = false;
    if let Some(id) = ci {
        match backend.destroy_ci(gpu, gi, id) {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) if e.code() == Some(Code::InUse) => busy = true,
            Err(e) => return Err(e.into()),
        }
        if !busy {
            crash_point(if lease.is_some() {
                "release-after-destroy-ci"
            } else {
                "gc-after-destroy"
            });
        }
    }
    let lock = lock_unless(reg, locked)?;
    if busy {
        return Ok(match lease {
            Some(l) => {
                reg.remove_intent(claim.lease)?;
                Some(ReleaseOutcome::Draining {
                    lease: l.id,
                    mig_uuid: l.mig_uuid,
                })
            }
            None => {
                unclaim(reg, claim.lease, restore)?;
                report.notes.push(format!(
                    "{head} is in use; gc will destroy it once it is idle"
                ));
                None
            }
        });
    }
    if lease.is_none() && ci.is_some() {
        report.repaired.push(format!("{head}: destroyed"));
    }
    // A lease's GPU instance goes only under migrun's sharing record; a repair's (or a failed create's) is licensed by
    // its intent, which journalled the GPU instance its own create returned (`gi_may_go` says it made it).
    let ours = lease.is_none()
        || reg.created()?.iter().any(|r| {
            r.shared && r.gpu_uuid == gpu_uuid && r.gi == gi && r.placement == claim.placement
        });
    let empty = ours && gi_empty(backend, reg, gpu, &gpu_uuid, gi, claim.lease)?;
    let outcome = lease.as_ref().map(|l| ReleaseOutcome::Destroyed {
        lease: l.id,
        mig_uuid: l.mig_uuid.clone(),
    });
    if !(empty && gi_may_go) {
        if let Some(l) = &lease {
            if empty {
                // Kept empty: `keep_idle_s` (issue 23) counts from here, as for a kept whole instance.
                if let Some(mut r) = reg
                    .created()?
                    .into_iter()
                    .find(|r| r.shared && r.gpu_uuid == l.gpu_uuid && r.gi == l.gi)
                {
                    r.idle_since = Some(lease::now());
                    reg.write_created(&r)?;
                }
            }
            reg.remove_lease(l.id)?;
        }
        reg.remove_intent(claim.lease)?;
        return Ok(outcome);
    }
    // The GPU instance goes too. Claimed as an instance no lease holds (planners hide it from now on), then the lease
    // is dropped; a crash from here on leaves an intent gc repairs by destroying the GPU instance while it is empty.
    let gi_claim = super::drain::as_claim(&Intent {
        gi: Some(gi),
        ci: Some(CiIntent {
            new_gi: true,
            profile_id: None,
            start: None,
            id: None,
        }),
        ..claim.clone()
    });
    reg.write_intent(&gi_claim)?;
    if let Some(l) = &lease {
        reg.remove_lease(l.id)?;
    }
    crash_point("ci-release-after-claim-gi");
    drop(lock);
    let destroyed = backend.destroy_gi(gpu, gi);
    if destroyed.is_ok() {
        crash_point("release-after-destroy-gi");
    }
    let _lock = lock_unless(reg, locked)?;
    match destroyed {
        Ok(()) => {}
        Err(e) if e.code() == Some(Code::NotFound) => {}
        // Someone made a compute instance in it meanwhile: it stays, as a sharing GPU instance.
        Err(e) if e.code() == Some(Code::InUse) => {
            reg.remove_intent(gi_claim.lease)?;
            return Ok(outcome);
        }
        Err(e) => {
            // Left to gc: the claim without a start time is an intent it repairs.
            reg.write_intent(&Intent {
                start_time: None,
                ..gi_claim
            })?;
            return Err(e.into());
        }
    }
    forget_record(reg, &gpu_uuid, gi, "", claim.placement)?;
    crash_point("release-after-remove-record");
    reg.remove_intent(gi_claim.lease)?;
    if lease.is_none() {
        report.repaired.push(format!(
            "GPU instance of an interrupted compute-instance allocation (lease {}, GPU {gpu} GI {gi}): destroyed",
            claim.lease
        ));
    }
    Ok(outcome)
}

/// Repair a crashed compute-instance allocation from its intent (`ci` is its compute-instance part), under the lock:
/// claim the destroy of the compute instance whose id it journaled unless a lease holds it, and of the GPU instance
/// it created once nothing is in it ([`run_ci`] makes them after the lock). A compute instance whose id was never
/// journaled is left alone.
pub(super) fn repair(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &mut MigState,
    leases: &[Lease],
    intent: &Intent,
    ci: &CiIntent,
    report: &mut super::GcReport,
) -> Result<Option<Job>, AllocError> {
    let leased = |gpu_uuid: &str, gi: u32| on_gi(leases, gpu_uuid, gi).next().is_some();
    let Some(gi) = intent.gi else {
        drop_unbound_intent(reg, state, intent, &leased, report)?;
        return Ok(None);
    };
    let head = format!(
        "an interrupted compute-instance allocation (lease {}, in GPU {} GI {} {} at {})",
        intent.lease, intent.gpu_index, gi, intent.profile, intent.placement
    );
    let Some((g, i)) = shared_instance(
        state,
        &intent.gpu_uuid,
        gi,
        intent.profile_id,
        intent.placement,
    )
    .map(|(g, i)| (g.clone(), i.clone())) else {
        if ci.new_gi && !leased(&intent.gpu_uuid, gi) {
            reg.remove_created(&intent.gpu_uuid, gi)?;
        }
        reg.remove_intent(intent.lease)?;
        report.notes.push(format!(
            "dropped the journal of {head}: its GPU instance is gone"
        ));
        return Ok(None);
    };
    let mut doomed = None;
    if let Some(id) = ci.id {
        if on_gi(leases, &g.info.uuid, gi).any(|l| l.ci == id) {
            // The allocation did finish (or a release claimed it): its lease stands for the compute instance.
            reg.remove_intent(intent.lease)?;
            return Ok(None);
        }
        doomed = i
            .compute_instances
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.id);
    } else if let (Some(profile_id), Some(start)) = (ci.profile_id, ci.start) {
        // Died between the create and journaling its id: a compute instance there may be what it made,
        // or someone's since; nothing tells them apart, so it is left alone and reported.
        let candidate = backend
            .ci_placements(g.info.index, gi)?
            .into_iter()
            .find(|c| {
                c.profile_id == profile_id
                    && c.placement.start == start
                    && !on_gi(leases, &g.info.uuid, gi).any(|l| l.ci == c.ci)
            });
        if let Some(c) = candidate {
            report.notes.push(format!(
                "{head}: compute instance {} there may be what it left or someone else's, and migrun cannot tell, so it leaves it alone (if nobody uses it, remove it with nvidia-smi mig -dci)",
                c.ci
            ));
        }
    }
    let gi_may_go = ci.new_gi && !leased(&g.info.uuid, gi) && i.processes == 0;
    if doomed.is_none() && !(gi_may_go && i.compute_instances.is_empty()) {
        reg.remove_intent(intent.lease)?;
        return Ok(None);
    }
    // Claimed under the intent's own id (planners see the GPU instance as taken while this process destroys).
    let claim = super::drain::as_claim(intent);
    reg.write_intent(&claim)?;
    Ok(Some(Job {
        claim,
        restore: Some(intent.clone()),
        kind: Kind::Ci(Box::new(CiJob {
            gpu: g.info.index,
            gpu_uuid: g.info.uuid.clone(),
            gi,
            ci: doomed,
            lease: None,
            gi_may_go,
        })),
        purpose: Purpose::Repair(head),
    }))
}
