//! Applying a plan under the lock: reuse records a lease; create journals an intent, creates the GI and its
//! default CI, records the instance and the lease, and rolls back what it can when a step fails; evicting
//! idle kept instances to make room. Each step of a create or an eviction has a crash point (`testhook`), so the
//! crash tests can stop it there.

use super::reconcile::{destroy, record_matches, DestroyError};
use super::share::Target;
use super::testhook::crash_point;
use super::{AllocError, AllocRequest, CiFailure};
use crate::gpu::{Backend, GpuError, GpuState, MigState};
use crate::lease::{self, CreatedRecord, Intent, Lease, LeaseId, LeaseState, Registry};
use crate::policy::Plan;

/// Execute a plan (under the lock): reuse records a lease; create journals an intent, creates the GI
/// and its default CI (destroying the GI again if the CI fails), records the instance and the lease.
pub(crate) fn apply(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &MigState,
    plan: &Plan,
    req: &AllocRequest,
) -> Result<Lease, AllocError> {
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
            super::share::apply(backend, reg, state, &target, *ci, lease)
        }
        Plan::NewShared { choice, ci } => {
            super::share::apply(backend, reg, state, &Target::NewGi(*choice), *ci, lease)
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
            Ok(lease)
        }
        Plan::Create(choice) => {
            let profile = g
                .profile_by_id(choice.profile_id)
                .map_or(format!("profile {}", choice.profile_id), |p| {
                    p.short_name().to_string()
                });
            let mut intent = Intent {
                lease: id,
                gpu_index: g.info.index,
                gpu_uuid: g.info.uuid.clone(),
                profile_id: choice.profile_id,
                profile: profile.clone(),
                placement: choice.placement,
                gi: None,
                ci: None,
                pid: std::process::id(),
                created_at: now,
            };
            reg.write_intent(&intent)?;
            crash_point("after-intent");
            let gi =
                match backend.create_gi(g.info.index, choice.profile_id, choice.placement.start) {
                    Ok(gi) => gi,
                    Err(e) => {
                        reg.remove_intent(id)?;
                        return Err(e.into());
                    }
                };
            crash_point("after-create-gi");
            intent.gi = Some(gi);
            if let Err(e) = reg.write_intent(&intent) {
                rollback(backend, reg, g, gi, None, id);
                return Err(e.into());
            }
            crash_point("after-journal-gi");
            let ci = match backend.create_default_ci(g.info.index, gi) {
                Ok(ci) => ci,
                Err(cause) => {
                    let rollback = match backend.destroy_gi(g.info.index, gi) {
                        Ok(()) => {
                            reg.remove_intent(id)?;
                            None
                        }
                        Err(e) => Some(e),
                    };
                    return Err(AllocError::CreateCi(Box::new(CiFailure {
                        gpu: g.info.label(),
                        gi,
                        profile,
                        placement: choice.placement,
                        cause,
                        rollback,
                    })));
                }
            };
            crash_point("after-create-ci");
            lease.gi = gi;
            lease.ci = ci.id;
            lease.profile_id = choice.profile_id;
            lease.profile = profile.clone();
            lease.placement = choice.placement;
            lease.mig_uuid = ci.mig_uuid.clone();
            lease.created = true;
            let record = CreatedRecord {
                gpu_index: g.info.index,
                gpu_uuid: g.info.uuid.clone(),
                gi,
                profile_id: choice.profile_id,
                profile,
                placement: choice.placement,
                mig_uuid: ci.mig_uuid.clone(),
                shared: false,
                created_at: now,
            };
            if let Err(e) = reg.write_created(&record) {
                rollback(backend, reg, g, gi, Some(ci.id), id);
                return Err(e.into());
            }
            crash_point("after-record-created");
            if let Err(e) = reg.write_lease(&lease) {
                rollback(backend, reg, g, gi, Some(ci.id), id);
                return Err(e.into());
            }
            super::account::granted(reg, &lease, "created");
            crash_point("after-write-lease");
            reg.complete_intent(id)?;
            Ok(lease)
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

/// Best-effort undo of a half-made instance when recording it failed; whatever cannot be undone
/// stays journaled in the intent, for gc.
fn rollback(
    backend: &mut dyn Backend,
    reg: &Registry,
    g: &GpuState,
    gi: u32,
    ci: Option<u32>,
    intent: LeaseId,
) {
    if let Some(ci) = ci {
        if backend.destroy_ci(g.info.index, gi, ci).is_err() {
            return;
        }
    }
    if backend.destroy_gi(g.info.index, gi).is_ok() {
        let _ = reg.remove_created(&g.info.uuid, gi);
        let _ = reg.remove_intent(intent);
    }
}
