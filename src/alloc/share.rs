//! Compute-instance slices (issue 22): listing migrun's sharing GPU instances for the planner, and creating a compute instance in one (after creating that GPU instance when the plan says so): reserved under the lock, made outside it (issue 23), journalled at each step; it must not plan or name an engine. Ending such leases and repairing them is `share_end`.
//!
//! A sharing GPU instance is one lease group: its `created/` record (marked `shared`, no MIG UUID of
//! its own) stands for the GPU instance, each lease for one compute instance in it (its CI id and MIG
//! UUID). Only migrun's own records license a destroy, and a compute instance is destroyed only by the
//! lease or the intent that names its id; a compute instance nothing names is left alone and reported.

use super::drain::{CiJob, Job, Kind, Purpose};
use super::inflight::abandon;
use super::reconcile::gpu_by_uuid;
use super::testhook::crash_point;
use super::AllocError;
use crate::gpu::{Backend, Code, GpuError, GpuInstance, GpuState, MigState, Placement};
use crate::lease::{self, CiIntent, CreatedRecord, Intent, Lease, Registry};
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

pub(super) fn on_gi<'a>(
    leases: &'a [Lease],
    gpu_uuid: &'a str,
    gi: u32,
) -> impl Iterator<Item = &'a Lease> {
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

/// A compute-instance allocation reserved under the lock ([`reserve`]), made outside it by [`build`].
pub(crate) struct CiReservation {
    pub intent: Intent,
    pub lease: Lease,
    pub ci: CiProfileName,
    /// `GPU i (GPU-…)`, for messages.
    pub gpu_label: String,
}

/// Reserve a compute-instance plan (under the lock) for `lease`, whose holder, uid and id are set: journal the
/// intent with this process's start time. Into a sharing GPU instance, it names the compute instance's slot, which
/// planners see as taken from now on (`inflight::overlay_shared`); a new sharing GPU instance is a placement taken,
/// as for a whole instance.
pub(super) fn reserve(
    reg: &Registry,
    state: &MigState,
    target: &Target,
    ci: CiProfileName,
    lease: Lease,
) -> Result<CiReservation, AllocError> {
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
    let pid = std::process::id();
    let mut intent = Intent {
        lease: lease.id,
        gpu_index: gpu,
        gpu_uuid: g.info.uuid.clone(),
        profile_id: 0,
        profile: String::new(),
        placement: Placement { start: 0, size: 0 },
        gi: None,
        ci: None,
        pid,
        created_at: lease.created_at,
        start_time: lease::process_start_time(pid),
        uid: Some(lease.uid),
        name: lease.name.clone(),
        destroy: false,
    };
    match target {
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
        }
    }
    reg.write_intent(&intent)?;
    crash_point("ci-after-intent");
    Ok(CiReservation {
        intent,
        lease,
        ci,
        gpu_label: g.info.label(),
    })
}

/// Make a reserved compute-instance allocation (outside the lock): the sharing GPU instance first when the plan
/// says so (then, under the lock, its record and this request's slot in it, so other requests can fill the rest
/// meanwhile), then the compute instance, journalling each id; the lease is written under the lock.
pub(super) fn build(
    backend: &mut dyn Backend,
    reg: &Registry,
    r: CiReservation,
) -> Result<Lease, AllocError> {
    let CiReservation {
        mut intent,
        mut lease,
        ci,
        gpu_label,
    } = r;
    crash_point("ci-reserved-unlocked");
    let gpu = intent.gpu_index;
    let chosen = intent.ci.clone().unwrap_or(CiIntent {
        new_gi: true,
        profile_id: None,
        start: None,
        id: None,
    });
    let (gi, profile_id, start) = match (intent.gi, chosen.profile_id, chosen.start) {
        (Some(gi), Some(p), Some(s)) if !chosen.new_gi => (gi, p, s),
        _ => new_gi(backend, reg, &mut intent, &ci, &gpu_label)?,
    };
    let c = match backend.create_ci(gpu, gi, profile_id, start) {
        Ok(c) => c,
        Err(e) => {
            give_back(backend, reg, &intent, gi);
            return Err(e.into());
        }
    };
    crash_point("ci-after-create-ci");
    if let Some(x) = intent.ci.as_mut() {
        x.id = Some(c.id);
    }
    let undo = |backend: &mut dyn Backend, intent: &Intent| {
        if backend.destroy_ci(gpu, gi, c.id).is_ok() {
            give_back(backend, reg, intent, gi);
        } else {
            abandon(reg, intent);
        }
    };
    if let Err(e) = reg.write_intent(&intent) {
        undo(backend, &intent);
        return Err(e.into());
    }
    crash_point("ci-after-journal-ci");
    lease.gi = gi;
    lease.ci = c.id;
    lease.profile_id = intent.profile_id;
    lease.profile = ci.to_string();
    lease.placement = intent.placement;
    lease.mig_uuid = c.mig_uuid.clone();
    lease.ci_profile = Some(ci);
    lease.created = true;
    let lock = reg.lock()?;
    if let Err(e) = reg.write_lease(&lease) {
        drop(lock);
        undo(backend, &intent);
        return Err(e.into());
    }
    super::account::granted(reg, &lease, "created");
    crash_point("ci-after-write-lease");
    reg.complete_intent(lease.id)?;
    Ok(lease)
}

/// The new sharing GPU instance of a reservation (outside the lock), then under the lock its record and the compute
/// instance's slot in it (the first free placement the device lists), journalled. Returns (GI, CI profile, start).
fn new_gi(
    backend: &mut dyn Backend,
    reg: &Registry,
    intent: &mut Intent,
    ci: &CiProfileName,
    gpu_label: &str,
) -> Result<(u32, u32, u32), AllocError> {
    let gpu = intent.gpu_index;
    let gi = match backend.create_gi(gpu, intent.profile_id, intent.placement.start) {
        Ok(gi) => gi,
        Err(e) => {
            let _lock = reg.lock()?;
            reg.remove_intent(intent.lease)?;
            return Err(e.into());
        }
    };
    crash_point("ci-after-create-gi");
    intent.gi = Some(gi);
    if let Err(e) = reg.write_intent(intent) {
        give_back(backend, reg, intent, gi);
        return Err(e.into());
    }
    crash_point("ci-after-journal-gi");
    let lock = reg.lock()?;
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
            drop(lock);
            give_back(backend, reg, intent, gi);
            return Err(AllocError::CiUnavailable {
                gpu: gpu_label.to_string(),
                gi,
                gi_profile: intent.profile.clone(),
                ci: *ci,
                why: ": the device lists no such compute-instance profile in it (the GPU instance was destroyed again)".into(),
            });
        }
        Err(e) => {
            drop(lock);
            give_back(backend, reg, intent, gi);
            return Err(e.into());
        }
    };
    let record = CreatedRecord {
        gpu_index: gpu,
        gpu_uuid: intent.gpu_uuid.clone(),
        gi,
        profile_id: intent.profile_id,
        profile: intent.profile.clone(),
        placement: intent.placement,
        mig_uuid: String::new(),
        shared: true,
        created_at: intent.created_at,
        idle_since: None,
    };
    let opened = reg.write_created(&record).and_then(|()| {
        crash_point("ci-after-record-gi");
        intent.ci = Some(CiIntent {
            new_gi: true,
            profile_id: Some(profile_id),
            start: Some(start),
            id: None,
        });
        reg.write_intent(intent)
    });
    drop(lock);
    if let Err(e) = opened {
        give_back(backend, reg, intent, gi);
        return Err(e.into());
    }
    Ok((gi, profile_id, start))
}

/// After a failed create (no compute instance of this allocation left): drop the reservation, and destroy the
/// sharing GPU instance if this allocation made it and nothing else is in it or coming into it (decided under the
/// lock and claimed, the destroy made without it: `drain`). Best effort: what is left stays journalled for gc.
fn give_back(backend: &mut dyn Backend, reg: &Registry, intent: &Intent, gi: u32) {
    let new_gi = intent.ci.as_ref().is_some_and(|c| c.new_gi);
    let job = (|| -> Result<Job, AllocError> {
        let _lock = reg.lock()?;
        let claim = super::drain::as_claim(&Intent {
            gi: Some(gi),
            ci: Some(CiIntent {
                new_gi,
                profile_id: None,
                start: None,
                id: None,
            }),
            ..intent.clone()
        });
        reg.write_intent(&claim)?;
        Ok(Job {
            claim,
            restore: None,
            kind: Kind::Ci(Box::new(CiJob {
                gpu: intent.gpu_index,
                gpu_uuid: intent.gpu_uuid.clone(),
                gi,
                ci: None,
                lease: None,
                gi_may_go: new_gi,
            })),
            purpose: Purpose::Repair(format!("the reservation of lease {}", intent.lease)),
        })
    })();
    let done = job.and_then(|job| {
        super::drain::run(backend, reg, vec![job], &mut super::GcReport::default())
    });
    if let Err(e) = done {
        tracing::warn!(lease = intent.lease, error = %e, "undoing a failed compute-instance create; gc finishes it");
        abandon(reg, intent);
    }
}
