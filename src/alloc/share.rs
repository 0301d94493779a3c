//! Compute-instance slices (issue 22): listing migrun's sharing GPU instances for the planner, creating a compute instance in one (after creating that GPU instance when the plan says so) under an intent journal, ending such a lease (its compute instance, then the GPU instance once nothing is in it), and repairing what a crashed allocation left; it must not plan or name an engine.
//!
//! A sharing GPU instance is one lease group: its `created/` record (marked `shared`, no MIG UUID of
//! its own) stands for the GPU instance, each lease for one compute instance in it (its CI id and MIG
//! UUID). Only migrun's own records license a destroy, and a compute instance is destroyed only by the
//! lease or the intent that names its id; a compute instance nothing names is left alone and reported.

use super::reconcile::{drop_unbound_intent, forget, gpu_by_uuid, keeps, lease_whole};
use super::testhook::crash_point;
use super::{AllocError, ReleaseOutcome};
use crate::config::Config;
use crate::gpu::{Backend, Code, GpuError, GpuInstance, GpuState, MigState, Placement};
use crate::lease::ledger::EndReason;
use crate::lease::{self, CiIntent, CreatedRecord, Intent, Lease, LeaseState, Registry};
use crate::policy::ci_plan::SharedGi;
use crate::policy::placement::Choice;
use crate::profile::CiProfileName;

/// Where a compute-instance plan puts the compute instance (the two compute-instance arms of `policy::Plan`).
pub(super) enum Target {
    /// CI profile `profile_id` at compute slice `start` of migrun's sharing GPU instance `gi` on `gpu`.
    Into {
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    },
    /// A new sharing GPU instance here first.
    NewGi(Choice),
}

impl Target {
    fn gpu(&self) -> u32 {
        match self {
            Target::Into { gpu, .. } => *gpu,
            Target::NewGi(c) => c.gpu,
        }
    }
}

/// The GPU instance a sharing record (or lease, or intent) names, if it is still that instance: same
/// GPU, GI id, profile and placement. Its compute instances may be any number, none included.
pub(super) fn shared_instance<'a>(
    state: &'a MigState,
    gpu_uuid: &str,
    gi: u32,
    profile_id: u32,
    placement: Placement,
) -> Option<(&'a GpuState, &'a GpuInstance)> {
    let g = gpu_by_uuid(state, gpu_uuid)?;
    let i = g
        .instances
        .iter()
        .find(|i| i.id == gi && i.profile_id == profile_id && i.placement == placement)?;
    Some((g, i))
}

/// Does a sharing `created/` record still name its GPU instance?
pub(super) fn shared_matches(state: &MigState, r: &CreatedRecord) -> bool {
    shared_instance(state, &r.gpu_uuid, r.gi, r.profile_id, r.placement).is_some()
}

fn on_gi<'a>(leases: &'a [Lease], gpu_uuid: &'a str, gi: u32) -> impl Iterator<Item = &'a Lease> {
    leases
        .iter()
        .filter(move |l| l.gpu_uuid == gpu_uuid && l.gi == gi)
}

/// migrun's sharing GPU instances as the planner sees them: who holds their compute instances, and
/// their compute-instance profiles and taken slices as the device reports them now.
pub(crate) fn shared_gis(
    backend: &mut dyn Backend,
    state: &MigState,
    created: &[CreatedRecord],
    leases: &[Lease],
) -> Result<Vec<SharedGi>, AllocError> {
    let mut out = Vec::new();
    for r in created
        .iter()
        .filter(|r| r.shared && shared_matches(state, r))
    {
        let Some(g) = gpu_by_uuid(state, &r.gpu_uuid) else {
            continue;
        };
        let mut users: Vec<String> = on_gi(leases, &r.gpu_uuid, r.gi)
            .map(|l| l.uid.to_string())
            .collect();
        users.sort();
        users.dedup();
        let profiles = backend.ci_profiles(g.info.index, r.gi)?;
        let taken = backend
            .ci_placements(g.info.index, r.gi)?
            .into_iter()
            .map(|c| c.placement)
            .collect();
        out.push(SharedGi {
            gpu: g.info.index,
            gi: r.gi,
            users,
            profiles,
            taken,
        });
    }
    Ok(out)
}

/// Best-effort undo of a half-made compute-instance allocation: its compute instance, then the GPU
/// instance when this allocation made it. Whatever cannot be undone stays journaled in the intent, for gc.
fn rollback(backend: &mut dyn Backend, reg: &Registry, intent: &Intent, gi: u32, ci: Option<u32>) {
    let gpu = intent.gpu_index;
    if let Some(ci) = ci {
        if backend.destroy_ci(gpu, gi, ci).is_err() {
            return;
        }
    }
    if intent.ci.as_ref().is_some_and(|c| c.new_gi) {
        if backend.destroy_gi(gpu, gi).is_err() {
            return;
        }
        let _ = reg.remove_created(&intent.gpu_uuid, gi);
    }
    let _ = reg.remove_intent(intent.lease);
}

/// Apply a compute-instance plan (under the lock) for `lease`, whose holder, uid and id are set: create the
/// sharing GPU instance first when the plan says so, then the compute instance, journaling each step.
pub(super) fn apply(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &MigState,
    target: &Target,
    ci: CiProfileName,
    mut lease: Lease,
) -> Result<Lease, AllocError> {
    let g = state.gpu(target.gpu()).ok_or(GpuError::NoSuchGpu {
        index: target.gpu(),
        count: state.gpus.len() as u32,
    })?;
    let gpu = g.info.index;
    let gi_name = |profile_id: u32| {
        g.profile_by_id(profile_id)
            .map_or(format!("profile {profile_id}"), |p| {
                p.short_name().to_string()
            })
    };
    let mut intent = Intent {
        lease: lease.id,
        gpu_index: gpu,
        gpu_uuid: g.info.uuid.clone(),
        profile_id: 0,
        profile: String::new(),
        placement: Placement { start: 0, size: 0 },
        gi: None,
        ci: None,
        pid: std::process::id(),
        created_at: lease.created_at,
        // No start time: the whole allocation runs under the lock, so no other process sees it in flight, and
        // a crash leaves an intent that gc repairs at once.
        start_time: None,
        uid: None,
        name: None,
        destroy: false,
    };
    let (gi, ci_profile_id, start) = match target {
        Target::Into {
            gi,
            profile_id,
            start,
            ..
        } => {
            let inst = g.instances.iter().find(|i| i.id == *gi).ok_or_else(|| {
                GpuError::nvml("finding the sharing GPU instance", gpu, Code::NotFound)
            })?;
            intent.profile_id = inst.profile_id;
            intent.profile = gi_name(inst.profile_id);
            intent.placement = inst.placement;
            intent.gi = Some(*gi);
            intent.ci = Some(CiIntent {
                new_gi: false,
                profile_id: Some(*profile_id),
                start: Some(*start),
                id: None,
            });
            reg.write_intent(&intent)?;
            crash_point("ci-after-intent");
            (*gi, *profile_id, *start)
        }
        Target::NewGi(choice) => {
            intent.profile_id = choice.profile_id;
            intent.profile = gi_name(choice.profile_id);
            intent.placement = choice.placement;
            intent.ci = Some(CiIntent {
                new_gi: true,
                profile_id: None,
                start: None,
                id: None,
            });
            reg.write_intent(&intent)?;
            crash_point("ci-after-intent");
            let gi = match backend.create_gi(gpu, choice.profile_id, choice.placement.start) {
                Ok(gi) => gi,
                Err(e) => {
                    reg.remove_intent(intent.lease)?;
                    return Err(e.into());
                }
            };
            crash_point("ci-after-create-gi");
            intent.gi = Some(gi);
            if let Err(e) = reg.write_intent(&intent) {
                rollback(backend, reg, &intent, gi, None);
                return Err(e.into());
            }
            let record = CreatedRecord {
                gpu_index: gpu,
                gpu_uuid: g.info.uuid.clone(),
                gi,
                profile_id: choice.profile_id,
                profile: intent.profile.clone(),
                placement: choice.placement,
                mig_uuid: String::new(),
                shared: true,
                created_at: lease.created_at,
                idle_since: None,
            };
            if let Err(e) = reg.write_created(&record) {
                rollback(backend, reg, &intent, gi, None);
                return Err(e.into());
            }
            crash_point("ci-after-record-gi");
            // Which CI profile ID and slices the new GPU instance offers is the device's word.
            let slot = backend.ci_profiles(gpu, gi).map(|profiles| {
                profiles
                    .into_iter()
                    .find(|p| p.slice_count == ci.ci_slices && p.remaining > 0)
                    .and_then(|p| {
                        let mut starts: Vec<u32> = p.placements.iter().map(|pl| pl.start).collect();
                        starts.sort();
                        starts.first().map(|s| (p.id, *s))
                    })
            });
            let (profile_id, start) = match slot {
                Ok(Some(s)) => s,
                Ok(None) => {
                    rollback(backend, reg, &intent, gi, None);
                    return Err(AllocError::CiUnavailable {
                        gpu: g.info.label(),
                        gi,
                        gi_profile: intent.profile.clone(),
                        ci,
                        why: ": the device lists no such compute-instance profile in it (the GPU instance was destroyed again)".into(),
                    });
                }
                Err(e) => {
                    rollback(backend, reg, &intent, gi, None);
                    return Err(e.into());
                }
            };
            intent.ci = Some(CiIntent {
                new_gi: true,
                profile_id: Some(profile_id),
                start: Some(start),
                id: None,
            });
            if let Err(e) = reg.write_intent(&intent) {
                rollback(backend, reg, &intent, gi, None);
                return Err(e.into());
            }
            (gi, profile_id, start)
        }
    };
    let c = match backend.create_ci(gpu, gi, ci_profile_id, start) {
        Ok(c) => c,
        Err(e) => {
            rollback(backend, reg, &intent, gi, None);
            return Err(e.into());
        }
    };
    crash_point("ci-after-create-ci");
    if let Some(ci) = intent.ci.as_mut() {
        ci.id = Some(c.id);
    }
    if let Err(e) = reg.write_intent(&intent) {
        rollback(backend, reg, &intent, gi, Some(c.id));
        return Err(e.into());
    }
    crash_point("ci-after-journal-ci");
    lease.gi = gi;
    lease.ci = c.id;
    lease.profile_id = intent.profile_id;
    lease.profile = ci.to_string();
    lease.placement = intent.placement;
    lease.mig_uuid = c.mig_uuid;
    lease.ci_profile = Some(ci);
    lease.created = true;
    if let Err(e) = reg.write_lease(&lease) {
        rollback(backend, reg, &intent, gi, Some(c.id));
        return Err(e.into());
    }
    super::account::granted(reg, &lease, "created");
    crash_point("ci-after-write-lease");
    reg.complete_intent(lease.id)?;
    Ok(lease)
}

/// End a compute-instance lease (under the lock; one attempt): destroy its compute instance, then the
/// sharing GPU instance once no compute instance and no other lease is left in it (unless kept).
pub(super) fn finish(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    state: &mut MigState,
    mut l: Lease,
    reason: EndReason,
) -> Result<ReleaseOutcome, AllocError> {
    let mig_uuid = l.mig_uuid.clone();
    if l.state == LeaseState::Active {
        reg.log_end(&l, reason);
    }
    // Only migrun's own sharing record licenses destroying anything in this GPU instance.
    let ours = l.created
        && reg.created()?.iter().any(|r| {
            r.shared
                && r.gpu_uuid == l.gpu_uuid
                && r.gi == l.gi
                && r.profile_id == l.profile_id
                && r.placement == l.placement
        });
    if !ours {
        tracing::warn!(lease = l.id, mig = %l.mig_uuid, "compute-instance lease without a matching sharing record; not destroying");
        let whole = lease_whole(state, &l);
        reg.remove_lease(l.id)?;
        return Ok(if whole {
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
        });
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
        return Ok(if was_draining {
            ReleaseOutcome::Destroyed {
                lease: l.id,
                mig_uuid,
            }
        } else {
            ReleaseOutcome::Gone {
                lease: l.id,
                mig_uuid,
            }
        });
    };
    let busy = ReleaseOutcome::Draining {
        lease: l.id,
        mig_uuid: mig_uuid.clone(),
    };
    // Its own compute instance: the CI id it recorded, with its MIG UUID (never a re-created one).
    if let Some(c) = i
        .compute_instances
        .iter()
        .find(|c| c.id == l.ci && c.mig_uuid == l.mig_uuid)
    {
        if c.processes > 0 {
            return Ok(busy);
        }
        match backend.destroy_ci(g.info.index, i.id, c.id) {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) if e.code() == Some(Code::InUse) => return Ok(busy),
            Err(e) => return Err(e.into()),
        }
        crash_point("release-after-destroy-ci");
        forget_ci(state, &l.gpu_uuid, l.gi, c.id);
    }
    let empty = shared_instance(state, &l.gpu_uuid, l.gi, l.profile_id, l.placement)
        .is_some_and(|(_, i)| i.compute_instances.is_empty() && i.processes == 0);
    if empty && !others && !keeps(&l, config) {
        match backend.destroy_gi(g.info.index, i.id) {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::NotFound) => {}
            // Someone made a compute instance in it meanwhile: it stays, as a sharing GPU instance.
            Err(e) if e.code() == Some(Code::InUse) => {
                reg.remove_lease(l.id)?;
                return Ok(ReleaseOutcome::Destroyed {
                    lease: l.id,
                    mig_uuid,
                });
            }
            Err(e) => return Err(e.into()),
        }
        crash_point("release-after-destroy-gi");
        forget(state, &l.gpu_uuid, l.gi);
        reg.remove_created(&l.gpu_uuid, l.gi)?;
        crash_point("release-after-remove-record");
    } else if empty && !others {
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
    Ok(ReleaseOutcome::Destroyed {
        lease: l.id,
        mig_uuid,
    })
}

/// Drop a compute instance from the in-memory snapshot after destroying it.
fn forget_ci(state: &mut MigState, gpu_uuid: &str, gi: u32, ci: u32) {
    if let Some(i) = state
        .gpus
        .iter_mut()
        .find(|g| g.info.uuid == gpu_uuid)
        .and_then(|g| g.instances.iter_mut().find(|i| i.id == gi))
    {
        i.compute_instances.retain(|c| c.id != ci);
    }
}

/// Repair a crashed compute-instance allocation from its intent (`ci` is its compute-instance part):
/// destroy the compute instance whose id it journaled unless a lease holds it, then the GPU instance
/// it created once nothing is in it. A compute instance whose id was never journaled is left alone.
pub(super) fn repair(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &mut MigState,
    leases: &[Lease],
    intent: &Intent,
    ci: &CiIntent,
    report: &mut super::GcReport,
) -> Result<(), AllocError> {
    let leased = |gpu_uuid: &str, gi: u32| on_gi(leases, gpu_uuid, gi).next().is_some();
    let Some(gi) = intent.gi else {
        return drop_unbound_intent(reg, state, intent, &leased, report);
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
        return Ok(());
    };
    if let Some(id) = ci.id {
        if on_gi(leases, &g.info.uuid, gi).any(|l| l.ci == id) {
            // The allocation did finish: its lease stands for the compute instance.
            reg.remove_intent(intent.lease)?;
            return Ok(());
        }
        if i.compute_instances.iter().any(|c| c.id == id) {
            match backend.destroy_ci(g.info.index, gi, id) {
                Ok(()) => {
                    forget_ci(state, &g.info.uuid, gi, id);
                    report
                        .repaired
                        .push(format!("compute instance {id} of {head}: destroyed"));
                }
                Err(e) if e.code() == Some(Code::InUse) => {
                    report.notes.push(format!(
                        "compute instance {id} of {head} is in use; gc will destroy it once it is idle"
                    ));
                    return Ok(());
                }
                Err(e) if e.code() == Some(Code::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
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
    let empty = shared_instance(state, &g.info.uuid, gi, intent.profile_id, intent.placement)
        .is_some_and(|(_, i)| i.compute_instances.is_empty() && i.processes == 0);
    if ci.new_gi && empty && !leased(&g.info.uuid, gi) {
        match backend.destroy_gi(g.info.index, gi) {
            Ok(()) => {
                forget(state, &g.info.uuid, gi);
                reg.remove_created(&g.info.uuid, gi)?;
                report
                    .repaired
                    .push(format!("GPU instance of {head}: destroyed"));
            }
            Err(e) if e.code() == Some(Code::InUse) => {
                report.notes.push(format!(
                    "the GPU instance of {head} is in use; gc will destroy it once it is idle"
                ));
                return Ok(());
            }
            Err(e) if e.code() == Some(Code::NotFound) => {
                reg.remove_created(&g.info.uuid, gi)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    reg.remove_intent(intent.lease)?;
    Ok(())
}
