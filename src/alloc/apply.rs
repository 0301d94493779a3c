//! Applying a plan under the lock: reuse records a lease; create journals a reservation (an intent) whose GI and CI
//! `inflight` makes outside the lock; evicting idle kept instances to make room. Each step of a create or an
//! eviction has a crash point (`testhook`), so the crash tests can stop it there.

use super::drain::{claim_orphan, Job, Purpose};
use super::reconcile::record_matches;
use super::share::Target;
use super::testhook::crash_point;
use super::{AllocError, AllocRequest};
use crate::gpu::{GpuError, MigState};
use crate::lease::{self, Intent, Lease, LeaseState, Registry};
use crate::policy::Plan;

/// What applying a plan under the lock gave: a lease (reuse), or a reservation whose instance is made outside
/// the lock (`inflight::build`).
pub(crate) enum Applied {
    Leased(Lease),
    Reserved(super::inflight::Reservation),
    /// A compute instance (and maybe its sharing GPU instance), made outside the lock by `share::build`.
    ReservedCi(super::share::CiReservation),
}

/// Execute a plan (under the lock): reuse records a lease; create journals a reservation (an intent), whose GI
/// and default CI the caller makes after dropping the lock; a compute-instance plan likewise (`share::reserve`).
pub(crate) fn apply(
    reg: &Registry,
    state: &MigState,
    plan: &Plan,
    req: &AllocRequest,
) -> Result<Applied, AllocError> {
    let g = state.gpu(plan.gpu()).ok_or(GpuError::NoSuchGpu {
        index: plan.gpu(),
        count: state.gpus.len() as u32,
    })?;
    let now = lease::now();
    let id = reg.next_lease_id()?;
    let mut lease = Lease {
        id,
        name: req.name.clone(),
        holder: req.holder.clone(),
        uid: req.uid,
        gpu_index: g.info.index,
        gpu_uuid: g.info.uuid.clone(),
        gi: 0,
        ci: 0,
        profile_id: 0,
        profile: String::new(),
        placement: crate::gpu::Placement { start: 0, size: 0 },
        mig_uuid: String::new(),
        ci_profile: None,
        created: false,
        keep: req.keep,
        state: LeaseState::Active,
        created_at: now,
        updated_at: now,
    };
    match plan {
        Plan::IntoShared {
            gpu,
            gi,
            profile_id,
            start,
            ci,
        } => {
            let target = Target::Into {
                gpu: *gpu,
                gi: *gi,
                profile_id: *profile_id,
                start: *start,
            };
            super::share::reserve(reg, state, &target, *ci, lease).map(Applied::ReservedCi)
        }
        Plan::NewShared { choice, ci } => {
            super::share::reserve(reg, state, &Target::NewGi(*choice), *ci, lease)
                .map(Applied::ReservedCi)
        }
        Plan::Reuse {
            gi,
            ci,
            mig_uuid,
            profile_id,
            profile,
            placement,
            ..
        } => {
            lease.gi = *gi;
            lease.ci = *ci;
            lease.profile_id = *profile_id;
            lease.profile = profile.clone();
            lease.placement = *placement;
            lease.mig_uuid = mig_uuid.clone();
            // Kept warm by migrun earlier? Then it is still migrun's to destroy.
            lease.created = reg
                .created()?
                .iter()
                .any(|r| r.gpu_uuid == g.info.uuid && r.gi == *gi && record_matches(state, r));
            reg.write_lease(&lease)?;
            super::account::granted(reg, &lease, "reused");
            Ok(Applied::Leased(lease))
        }
        Plan::Create(choice) => {
            let profile = g
                .profile_by_id(choice.profile_id)
                .map_or(format!("profile {}", choice.profile_id), |p| {
                    p.short_name().to_string()
                });
            let intent = Intent {
                lease: id,
                gpu_index: g.info.index,
                gpu_uuid: g.info.uuid.clone(),
                profile_id: choice.profile_id,
                profile,
                placement: choice.placement,
                gi: None,
                ci: None,
                pid: std::process::id(),
                created_at: now,
                start_time: None,
                uid: None,
                name: None,
                destroy: false,
            };
            // The driver work happens outside the lock (`inflight`): only the reservation is made here.
            let r = super::inflight::reserve(
                reg,
                super::inflight::Reservation {
                    intent,
                    lease,
                    gpu_label: g.info.label(),
                },
            )?;
            Ok(Applied::Reserved(r))
        }
    }
}

/// Claim (under the lock) the destroy of idle instances migrun kept warm, to make room; the caller makes them after
/// dropping the lock (`drain::run`). Each claim is an intent naming the instance, so planners see it as taken while
/// this process lives, and a crash leaves it to gc, which destroys the instance no lease holds.
pub(super) fn claim_evictions(
    reg: &Registry,
    state: &MigState,
    victims: &[(u32, u32)],
) -> Result<Vec<Job>, AllocError> {
    let created = reg.created()?;
    let mut jobs = Vec::new();
    for &(gpu, gi) in victims {
        let Some(g) = state.gpu(gpu) else { continue };
        let Some(i) = g.instances.iter().find(|i| i.id == gi) else {
            continue;
        };
        // Cross-check with the record before destroying: same profile, placement and MIG UUID.
        let Some(r) = created
            .iter()
            .find(|r| r.gpu_uuid == g.info.uuid && r.gi == gi && record_matches(state, r))
        else {
            continue;
        };
        // A sharing GPU instance goes only while it holds no compute instance (the planner asks the same); a busy
        // instance never.
        if (r.shared && !i.compute_instances.is_empty()) || i.processes > 0 {
            continue;
        }
        jobs.push(claim_orphan(reg, g, i, Some(r), Purpose::Evict)?);
        crash_point("evict-after-intent");
    }
    Ok(jobs)
}
