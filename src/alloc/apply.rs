//! Applying a plan under the lock: reuse records a lease; create journals a reservation (an intent) whose GI and CI
//! `inflight` makes outside the lock; evicting idle kept instances to make room. Each step of a create or an
//! eviction has a crash point (`testhook`), so the crash tests can stop it there.

use super::reconcile::{destroy, record_matches, DestroyError};
use super::share::Target;
use super::testhook::crash_point;
use super::{AllocError, AllocRequest};
use crate::gpu::{Backend, GpuError, MigState};
use crate::lease::{self, Intent, Lease, LeaseState, Registry};
use crate::policy::Plan;

/// What applying a plan under the lock gave: a lease (reuse), or a reservation whose instance is made outside
/// the lock (`inflight::build`).
pub(crate) enum Applied {
    Leased(Lease),
    Reserved(super::inflight::Reservation),
}

/// Execute a plan (under the lock): reuse records a lease; create journals a reservation (an intent), whose GI
/// and default CI the caller makes after dropping the lock. A compute-instance plan (`share`) is still carried out
/// whole under the lock, driver calls included (a known limit, docs/leases.md).
pub(crate) fn apply(
    backend: &mut dyn Backend,
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
            super::share::apply(backend, reg, state, &target, *ci, lease).map(Applied::Leased)
        }
        Plan::NewShared { choice, ci } => {
            super::share::apply(backend, reg, state, &Target::NewGi(*choice), *ci, lease)
                .map(Applied::Leased)
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

/// Destroy idle instances migrun kept warm, to make room. Each is journaled as an intent first (with
/// its GI id and no lease), so a crash half-way leaves something gc finishes destroying.
pub(super) fn evict(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &MigState,
    victims: &[(u32, u32)],
) -> Result<(), AllocError> {
    let created = reg.created()?;
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
        // A sharing GPU instance goes only while it holds no compute instance (the planner asks the same).
        if r.shared && !i.compute_instances.is_empty() {
            continue;
        }
        let intent = Intent {
            lease: reg.next_lease_id()?,
            gpu_index: gpu,
            gpu_uuid: g.info.uuid.clone(),
            profile_id: r.profile_id,
            profile: r.profile.clone(),
            placement: r.placement,
            gi: Some(gi),
            ci: None,
            pid: std::process::id(),
            created_at: lease::now(),
            start_time: None,
            uid: None,
            name: None,
            destroy: false,
        };
        reg.write_intent(&intent)?;
        crash_point("evict-after-intent");
        match destroy(backend, g, i, false) {
            Ok(()) => {
                crash_point("evict-after-destroy");
                reg.remove_created(&g.info.uuid, gi)?;
                reg.remove_intent(intent.lease)?;
                tracing::info!(gpu, gi, profile = %r.profile, "destroyed an idle kept instance to make room");
            }
            // Someone started using it since the snapshot: leave it (the plan then finds no room).
            Err(DestroyError::Busy) => reg.remove_intent(intent.lease)?,
            Err(DestroyError::Other(e)) => return Err(e.into()),
        }
    }
    Ok(())
}
