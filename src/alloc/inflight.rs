//! Driver work outside the allocation lock (issue 23): a create is reserved under the lock (its intent journalled
//! with the process's start time), made outside it and committed under it again; live reservations are shown to
//! planners as taken places and leases. It must not plan, and it never destroys what its own intent does not name.
//!
//! Why: a GPU instance and its compute instance take about a second to make on real hardware; made under the
//! host-wide lock, N containers starting together are served one create after another. Outside it, they overlap.
//!
//! Safety rests on the intent: written under the lock before any driver call, it names the GPU, profile and
//! placement (and the GI id once the driver returned it), so
//! - two requests never get the same placement: a planner under the lock sees every live reservation as an
//!   instance at its placement, held by a lease ([`overlay`]);
//! - gc leaves an intent alone while its process (pid and start time) lives, and repairs it as before once the
//!   process is gone (a crash at any step: see `testhook::ALLOC_STEPS`);
//! - a failed create removes its intent (under the lock) after undoing what the driver made.

use super::account::registry;
use super::reconcile::{begin_end, destroy, end_destroyed, DestroyJob, Ending, Step};
use super::testhook::crash_point;
use super::{binding, AllocError, CiFailure, ReleaseOutcome, RELEASE_BACKOFF_MS};
use crate::config::Config;
use crate::gpu::{Backend, GpuInstance, MigState};
use crate::lease::ledger::EndReason;
use crate::lease::{self, CreatedRecord, Holder, Intent, Lease, LeaseState, Registry};
use crate::statedir::StateDir;
use std::time::Duration;

/// GI ids of placeholders start here: far above any id the driver gives (NVML's are below 64), so a
/// placeholder never names a real instance.
const PLACEHOLDER_GI: u32 = 1 << 30;

/// A create reserved under the lock: its journalled intent and the lease it becomes.
pub(crate) struct Reservation {
    pub intent: Intent,
    pub lease: Lease,
    /// `GPU i (GPU-…)`, for messages.
    pub gpu_label: String,
}

/// Journal the reservation (under the lock): from here on planners see its placement as taken, and gc leaves it
/// alone while this process lives.
pub(super) fn reserve(reg: &Registry, mut r: Reservation) -> Result<Reservation, AllocError> {
    r.intent.start_time = lease::process_start_time(r.intent.pid);
    r.intent.uid = Some(r.lease.uid);
    r.intent.name = r.lease.name.clone();
    reg.write_intent(&r.intent)?;
    crash_point("after-intent");
    Ok(r)
}

/// Make the reserved instance (outside the lock), then record it and its lease under the lock.
pub(super) fn build(
    backend: &mut dyn Backend,
    reg: &Registry,
    r: Reservation,
) -> Result<Lease, AllocError> {
    let Reservation {
        mut intent,
        mut lease,
        gpu_label,
    } = r;
    crash_point("reserved-unlocked");
    let (gpu, id) = (intent.gpu_index, intent.lease);
    let gi = match backend.create_gi(gpu, intent.profile_id, intent.placement.start) {
        Ok(gi) => gi,
        Err(e) => {
            let _lock = reg.lock()?;
            reg.remove_intent(id)?;
            return Err(e.into());
        }
    };
    crash_point("after-create-gi");
    intent.gi = Some(gi);
    if let Err(e) = reg.write_intent(&intent) {
        undo(backend, reg, &intent, gi, None);
        return Err(e.into());
    }
    crash_point("after-journal-gi");
    let ci = match backend.create_default_ci(gpu, gi) {
        Ok(ci) => ci,
        Err(cause) => {
            let rollback = match backend.destroy_gi(gpu, gi) {
                Ok(()) => {
                    let _lock = reg.lock()?;
                    reg.remove_intent(id)?;
                    None
                }
                // The intent (with the GI id) stays, handed to gc.
                Err(e) => {
                    abandon(reg, &intent);
                    Some(e)
                }
            };
            return Err(AllocError::CreateCi(Box::new(CiFailure {
                gpu: gpu_label,
                gi,
                profile: intent.profile.clone(),
                placement: intent.placement,
                cause,
                rollback,
            })));
        }
    };
    crash_point("after-create-ci");
    lease.gi = gi;
    lease.ci = ci.id;
    lease.profile_id = intent.profile_id;
    lease.profile = intent.profile.clone();
    lease.placement = intent.placement;
    lease.mig_uuid = ci.mig_uuid.clone();
    lease.created = true;
    let record = CreatedRecord {
        gpu_index: gpu,
        gpu_uuid: intent.gpu_uuid.clone(),
        gi,
        profile_id: intent.profile_id,
        profile: intent.profile.clone(),
        placement: intent.placement,
        mig_uuid: ci.mig_uuid.clone(),
        shared: false,
        created_at: lease.created_at,
        idle_since: None,
    };
    let lock = reg.lock()?;
    let committed = reg.write_created(&record).and_then(|()| {
        crash_point("after-record-created");
        reg.write_lease(&lease)
    });
    if let Err(e) = committed {
        drop(lock);
        undo(backend, reg, &intent, gi, Some(ci.id));
        return Err(e.into());
    }
    super::account::granted(reg, &lease, "created");
    crash_point("after-write-lease");
    reg.complete_intent(id)?;
    Ok(lease)
}

/// Best-effort undo of a half-made instance when recording it failed (driver calls outside the lock, records
/// under it); whatever cannot be undone stays journalled in the intent, for gc once this process is gone.
fn undo(backend: &mut dyn Backend, reg: &Registry, intent: &Intent, gi: u32, ci: Option<u32>) {
    let gpu = intent.gpu_index;
    if let Some(ci) = ci {
        if backend.destroy_ci(gpu, gi, ci).is_err() {
            abandon(reg, intent);
            return;
        }
    }
    if backend.destroy_gi(gpu, gi).is_ok() {
        if let Ok(_lock) = reg.lock() {
            let _ = reg.remove_created(&intent.gpu_uuid, gi);
            let _ = reg.remove_intent(intent.lease);
        }
    } else {
        abandon(reg, intent);
    }
}

/// Hand an intent whose instance this process could not undo to gc at once: without its start time it is no
/// longer in flight, so the next gc (or allocation) repairs it, even while this process still runs.
pub(super) fn abandon(reg: &Registry, intent: &Intent) {
    if let Ok(_lock) = reg.lock() {
        let _ = reg.write_intent(&Intent {
            start_time: None,
            ..intent.clone()
        });
    }
}

/// Show every live reservation to a planner (under the lock): its placement holds a placeholder instance leased by
/// a placeholder lease (with the reservation's uid and name, so limits and names count it), and an instance the
/// driver already made for it is not offered to anyone. A claimed destroy of an instance no lease holds hides that
/// instance behind a placeholder too (no lease); a compute-instance slot takes only its slot (`overlay_shared`).
pub(crate) fn overlay(state: &mut MigState, leases: &mut Vec<Lease>, intents: &[Intent]) {
    // A create in flight, or the expiry of a kept instance (a destroy claim that no lease stands behind).
    let reserving = |i: &&Intent| !i.destroy || !leases.iter().any(|l| l.id == i.lease);
    let live: Vec<Intent> = intents
        .iter()
        .filter(|i| i.in_flight())
        .filter(reserving)
        .cloned()
        .collect();
    for i in &live {
        let Some(g) = state.gpus.iter_mut().find(|g| g.info.uuid == i.gpu_uuid) else {
            continue;
        };
        // A compute instance reserved in a sharing GPU instance: the GPU instance stays as it is (others may fill
        // its other slots; `overlay_shared` takes this one), and a placeholder lease on it counts the reservation's
        // uid and name.
        if let (true, Some(gi)) = (is_slot(i), i.gi) {
            leases.push(placeholder_lease(i, gi, PLACEHOLDER_GI));
            continue;
        }
        let uuid = g.info.uuid.clone();
        g.instances.retain(|x| {
            let leased = leases.iter().any(|l| l.gpu_uuid == uuid && l.gi == x.id);
            leased || !(x.placement == i.placement && x.profile_id == i.profile_id)
        });
        let gi = PLACEHOLDER_GI + (i.lease % u64::from(PLACEHOLDER_GI)) as u32;
        g.instances.push(GpuInstance {
            id: gi,
            profile_id: i.profile_id,
            placement: i.placement,
            compute_instances: Vec::new(),
            processes: 0,
        });
        // A destroy claim holds the placement but is nobody's lease: it must not count against the lease limits.
        if !i.destroy {
            leases.push(placeholder_lease(i, gi, 0));
        }
    }
}

/// The lease a live reservation stands for, on GI `gi` (compute instance `ci`), for planners to count.
fn placeholder_lease(i: &Intent, gi: u32, ci: u32) -> Lease {
    Lease {
        id: i.lease,
        name: i.name.clone(),
        holder: Holder::Process {
            pid: i.pid,
            start_time: i.start_time.unwrap_or(0),
        },
        uid: i.uid.unwrap_or(0),
        gpu_index: i.gpu_index,
        gpu_uuid: i.gpu_uuid.clone(),
        gi,
        ci,
        profile_id: i.profile_id,
        profile: i.profile.clone(),
        placement: i.placement,
        mig_uuid: String::new(),
        ci_profile: None,
        created: true,
        keep: false,
        state: LeaseState::Active,
        created_at: i.created_at,
        updated_at: i.created_at,
    }
}

/// Is another process making a new sharing GPU instance (its compute-instance reservation not yet open to others)?
pub(super) fn gi_in_the_making(intents: &[Intent]) -> bool {
    intents.iter().any(making_shared_gi)
}

/// A live reservation of a new sharing GPU instance whose compute slot is not chosen yet.
fn making_shared_gi(i: &Intent) -> bool {
    !i.destroy
        && i.in_flight()
        && i.ci
            .as_ref()
            .is_some_and(|c| c.new_gi && c.profile_id.is_none())
}

/// Is another request making a new sharing GPU instance of GPU-instance profile `gi_profile_id` on GPU `gpu` that a
/// compute-instance request of user `uid` could join (its own user's, or any when `across_users`)?
pub(super) fn joinable_gi_in_the_making(
    intents: &[Intent],
    gpu: u32,
    gi_profile_id: u32,
    uid: u32,
    across_users: bool,
) -> bool {
    intents.iter().any(|i| {
        making_shared_gi(i)
            && i.gpu_index == gpu
            && i.profile_id == gi_profile_id
            && (across_users || i.uid == Some(uid))
    })
}

/// A compute-instance reservation that names its slot in a sharing GPU instance migrun recorded (the GPU instance
/// stays visible and fillable by others; only the slot is taken).
pub(super) fn is_slot(i: &Intent) -> bool {
    !i.destroy
        && i.gi.is_some()
        && i.ci
            .as_ref()
            .is_some_and(|c| c.profile_id.is_some() && c.start.is_some())
}

/// Show live compute-instance reservations to a planner (under the lock): each takes its slot in its sharing GPU
/// instance (unless the device lists that compute instance already) and counts its user.
pub(crate) fn overlay_shared(
    shared: &mut [crate::policy::ci_plan::SharedGi],
    state: &MigState,
    intents: &[Intent],
) {
    for i in intents.iter().filter(|i| is_slot(i) && i.in_flight()) {
        let (Some(gi), Some(c)) = (i.gi, i.ci.as_ref()) else {
            continue;
        };
        let (Some(profile_id), Some(start)) = (c.profile_id, c.start) else {
            continue;
        };
        let Some(g) = state.gpus.iter().find(|g| g.info.uuid == i.gpu_uuid) else {
            continue;
        };
        let Some(s) = shared
            .iter_mut()
            .find(|s| s.gpu == g.info.index && s.gi == gi)
        else {
            continue;
        };
        if let Some(u) = i.uid {
            if !s.users.contains(&u.to_string()) {
                s.users.push(u.to_string());
                s.users.sort();
            }
        }
        if s.taken.iter().any(|t| t.start == start) {
            continue;
        }
        if let Some(p) = s.profiles.iter_mut().find(|p| p.id == profile_id) {
            if let Some(pl) = p.placements.iter().find(|pl| pl.start == start) {
                s.taken.push(*pl);
            }
            p.remaining = p.remaining.saturating_sub(1);
        }
    }
}

/// Draining leases whose instance is still whole and migrun's, with no destroy claimed yet: a request of the same
/// profile may take the instance over (issue 23).
pub(super) fn releasing(
    state: &MigState,
    leases: &[Lease],
    created: &[CreatedRecord],
    intents: &[Intent],
) -> Vec<Lease> {
    // Idle (no compute process) and whole: a busy draining instance stays draining, named as such.
    let idle = |l: &Lease| {
        state.gpus.iter().any(|g| {
            g.info.uuid == l.gpu_uuid
                && g.instances.iter().any(|i| {
                    i.id == l.gi
                        && i.processes == 0
                        && i.compute_instances.iter().any(|c| c.mig_uuid == l.mig_uuid)
                })
        })
    };
    leases
        .iter()
        // Never a compute-instance lease: its GPU instance is a sharing one, never handed over whole.
        .filter(|l| {
            l.state == LeaseState::Draining && l.created && l.ci_profile.is_none() && idle(l)
        })
        .filter(|l| {
            !intents
                .iter()
                .any(|i| i.destroy && i.lease == l.id && i.in_flight())
        })
        .filter(|l| {
            created
                .iter()
                .any(|r| r.gpu_uuid == l.gpu_uuid && r.gi == l.gi && r.mig_uuid == l.mig_uuid)
        })
        .cloned()
        .collect()
}

/// Before a plan that reuses a releasing instance is applied (under the lock): drop the draining lease first, so a
/// crash between the two leaves a kept idle instance of migrun's (reusable, never destroyed under a live lease).
pub(super) fn take_over(
    reg: &Registry,
    plan: &crate::policy::Plan,
    releasing: &[Lease],
) -> Result<(), AllocError> {
    let crate::policy::Plan::Reuse { gi, mig_uuid, .. } = plan else {
        return Ok(());
    };
    if let Some(old) = releasing
        .iter()
        .find(|l| l.gi == *gi && &l.mig_uuid == mig_uuid)
    {
        reg.remove_lease(old.id)?;
        crash_point("reuse-releasing-after-drop");
        tracing::info!(lease = old.id, mig = %old.mig_uuid, "a releasing instance is taken over instead of destroyed");
    }
    Ok(())
}

/// A GPU error as the driver gave it (for the retry on a placement taken by someone outside migrun).
pub(super) fn gpu_code(e: &AllocError) -> Option<crate::gpu::Code> {
    match e {
        AllocError::Gpu(g) => g.code(),
        _ => None,
    }
}

/// Claim a draining lease's destroy for this process (under the lock): an intent naming its instance, with this
/// process's start time, so gc and the sweeps of other requests leave the destroy to it while it runs; if it dies,
/// gc finishes the destroy. Returns the claim (its id is the lease's).
pub(super) fn claim(reg: &Registry, l: &Lease) -> Result<Intent, AllocError> {
    let claim = super::drain::lease_claim(l, l.gpu_index, None);
    reg.write_intent(&claim)?;
    Ok(claim)
}

/// End a lease found by `pick` (under the lock), retrying a busy destroy with backoff (the lock is
/// dropped while sleeping). `None` when `pick` finds no lease at the first attempt.
pub(super) fn release_with<F>(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    detach: bool,
    mut pick: F,
) -> Result<Option<ReleaseOutcome>, AllocError>
where
    F: FnMut(&Registry) -> Result<Option<Lease>, AllocError>,
{
    let reg = registry(dir, config, backend)?;
    let mut last: Option<Lease> = None;
    for attempt in 0..=RELEASE_BACKOFF_MS.len() {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(RELEASE_BACKOFF_MS[attempt - 1]));
        }
        let lock = reg.lock()?;
        let Some(l) = pick(&reg)? else {
            // Gone between attempts: gc (or an allocation's sweep) finished destroying it.
            return Ok(last.map(|l| ReleaseOutcome::Destroyed {
                lease: l.id,
                mig_uuid: l.mig_uuid,
            }));
        };
        last = Some(l.clone());
        let mut state = backend.snapshot()?;
        binding::bind(reg.dir(), &backend.kind(), &state, config)?;
        // A compute-instance lease: its GPU instance may hold other leases' compute instances, which must never be
        // destroyed with it (`share`); its compute instance (and the GPU instance once empty) go without the lock too.
        if l.ci_profile.is_some() {
            let purpose = super::drain::Purpose::Released;
            let o = match super::share_end::begin_end(
                &reg,
                config,
                &mut state,
                l,
                EndReason::Released,
                purpose,
            )? {
                Step::Done(o) => o,
                Step::Claimed(job) => {
                    drop(lock);
                    super::drain::run_release(backend, &reg, *job)?
                }
            };
            if !matches!(o, ReleaseOutcome::Draining { .. }) || attempt == RELEASE_BACKOFF_MS.len()
            {
                return Ok(Some(o));
            }
            continue;
        }
        let outcome = match begin_end(&reg, config, &mut state, l, EndReason::Released)? {
            Ending::Done(o) => o,
            // The destroy runs without the lock, claimed by an intent so that gc leaves it to this process.
            // Detached: the lease is draining (journalled), and a worker the caller starts destroys it.
            Ending::Destroy(job) if detach => ReleaseOutcome::Releasing {
                lease: job.lease.id,
                mig_uuid: job.lease.mig_uuid.clone(),
            },
            Ending::Destroy(job) => {
                let DestroyJob {
                    lease,
                    gpu,
                    instance,
                } = *job;
                let claim = claim(&reg, &lease)?;
                drop(lock);
                crash_point("release-after-claim");
                let destroyed = destroy(backend, &gpu, &instance, true);
                let _lock = reg.lock()?;
                let o = end_destroyed(&reg, &mut state, lease, destroyed);
                reg.remove_intent(claim.lease)?;
                o?
            }
        };
        if !matches!(outcome, ReleaseOutcome::Draining { .. })
            || attempt == RELEASE_BACKOFF_MS.len()
        {
            return Ok(Some(outcome));
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// The detached worker's job (`migrun __finish-release`): destroy the instance of draining lease `id` outside the
/// lock, claimed so that gc leaves it alone meanwhile. `NoLease` when the lease is no longer draining (gc, or a
/// request that took the releasing instance over, got there first).
pub(crate) fn finish_release(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    id: lease::LeaseId,
) -> Result<ReleaseOutcome, AllocError> {
    let pick = |reg: &Registry| -> Result<Option<Lease>, AllocError> {
        let claimed = reg
            .intents()?
            .iter()
            .any(|i| i.destroy && i.lease == id && i.in_flight());
        Ok(reg
            .lease(id)?
            .filter(|l| l.state == LeaseState::Draining && !claimed))
    };
    Ok(release_with(backend, dir, config, false, pick)?.unwrap_or(ReleaseOutcome::NoLease))
}
