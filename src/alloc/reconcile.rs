//! Reconciling the registry with the device: repair crashed allocations from their intents, release leases
//! of dead holders, finish draining ones, drop records of vanished instances, and destroy (CI, then GI) only
//! what migrun created; it must not plan or name an engine.
//!
//! Records are matched to the device by GPU UUID, GI id, profile, placement and MIG UUID, so a changed or
//! foreign instance is never taken for migrun's. [`sweep`] runs under the lock before every allocation and
//! in `migrun gc`; [`end_lease`] ends one lease for release and gc alike (its destroy claimed for `drain`).

use super::drain::Purpose;
use super::repair::repair_intent;
use super::testhook::crash_point;
use super::{binding, AllocError, GcReport, HolderProbe, ReleaseOutcome};
use crate::config::{Config, ReleasePolicy};
use crate::gpu::{Backend, Code, GpuError, GpuInstance, GpuState, MigState};
use crate::lease::ledger::EndReason;
use crate::lease::{self, CreatedRecord, Holder, Intent, Lease, LeaseId, LeaseState, Registry};

pub(super) fn gpu_by_uuid<'a>(state: &'a MigState, uuid: &str) -> Option<&'a GpuState> {
    state.gpus.iter().find(|g| g.info.uuid == uuid)
}

/// The GI a record names, if it is still the same instance: same id, profile and placement, and
/// (when it has a compute instance) the recorded MIG UUID. A GI that lost its CI still matches, so
/// an interrupted destroy can be finished.
fn find_instance<'a>(
    state: &'a MigState,
    gpu_uuid: &str,
    gi: u32,
    profile_id: u32,
    placement: crate::gpu::Placement,
    mig_uuid: &str,
) -> Option<(&'a GpuState, &'a GpuInstance)> {
    let g = gpu_by_uuid(state, gpu_uuid)?;
    let i = g.instances.iter().find(|i| {
        i.id == gi
            && i.profile_id == profile_id
            && i.placement == placement
            && (i.compute_instances.is_empty()
                || i.compute_instances.iter().any(|c| c.mig_uuid == mig_uuid))
    })?;
    Some((g, i))
}

fn lease_instance<'a>(state: &'a MigState, l: &Lease) -> Option<(&'a GpuState, &'a GpuInstance)> {
    find_instance(
        state,
        &l.gpu_uuid,
        l.gi,
        l.profile_id,
        l.placement,
        &l.mig_uuid,
    )
}

/// The instance is whole: its compute instance with the leased MIG UUID exists.
pub(super) fn lease_whole(state: &MigState, l: &Lease) -> bool {
    lease_instance(state, l)
        .is_some_and(|(_, i)| i.compute_instances.iter().any(|c| c.mig_uuid == l.mig_uuid))
}

pub(super) fn record_matches(state: &MigState, r: &CreatedRecord) -> bool {
    if r.shared {
        return super::share::shared_matches(state, r);
    }
    find_instance(
        state,
        &r.gpu_uuid,
        r.gi,
        r.profile_id,
        r.placement,
        &r.mig_uuid,
    )
    .is_some_and(|(_, i)| i.compute_instances.iter().any(|c| c.mig_uuid == r.mig_uuid))
}

/// Drop an instance from the in-memory snapshot after destroying it.
pub(super) fn forget(state: &mut MigState, gpu_uuid: &str, gi: u32) {
    if let Some(g) = state.gpus.iter_mut().find(|g| g.info.uuid == gpu_uuid) {
        g.instances.retain(|i| i.id != gi);
    }
}

/// Does a created/ record (migrun's own create) name exactly the instance this lease names?
pub(super) fn recorded_as_ours(reg: &Registry, l: &Lease) -> Result<bool, AllocError> {
    Ok(record_of(reg, l)?.is_some())
}

/// The created/ record that names exactly the instance this lease names, if any.
pub(super) fn record_of(reg: &Registry, l: &Lease) -> Result<Option<CreatedRecord>, AllocError> {
    Ok(reg.created()?.into_iter().find(|r| {
        r.gpu_uuid == l.gpu_uuid
            && r.gi == l.gi
            && r.profile_id == l.profile_id
            && r.placement == l.placement
            && r.mig_uuid == l.mig_uuid
    }))
}

/// A kept instance is idle from now on: its created/ record says since when (`keep_idle_s` counts from here).
pub(super) fn stamp_idle(reg: &Registry, l: &Lease) -> Result<(), AllocError> {
    match reg
        .created()?
        .into_iter()
        .find(|r| r.gpu_uuid == l.gpu_uuid && r.gi == l.gi && r.mig_uuid == l.mig_uuid)
    {
        Some(r) => mark_idle(reg, r),
        None => Ok(()),
    }
}

/// Stamp record `r` idle from now on (`keep_idle_s` counts from here).
pub(super) fn mark_idle(reg: &Registry, mut r: CreatedRecord) -> Result<(), AllocError> {
    r.idle_since = Some(lease::now());
    reg.write_created(&r)?;
    Ok(())
}

/// Remove the created/ record of exactly this instance (GPU, GI id, MIG UUID and placement). A destroy runs outside
/// the lock, so by the time its records go, the driver may have given the same GI id to a new instance whose own
/// record has the same file name; that one must stay.
pub(super) fn forget_record(
    reg: &Registry,
    gpu_uuid: &str,
    gi: u32,
    mig_uuid: &str,
    placement: crate::gpu::Placement,
) -> Result<(), AllocError> {
    let same = reg.created()?.iter().any(|r| {
        r.gpu_uuid == gpu_uuid && r.gi == gi && r.mig_uuid == mig_uuid && r.placement == placement
    });
    if same {
        reg.remove_created(gpu_uuid, gi)?;
    }
    Ok(())
}

fn forget_lease_record(reg: &Registry, l: &Lease) -> Result<(), AllocError> {
    forget_record(reg, &l.gpu_uuid, l.gi, &l.mig_uuid, l.placement)
}

/// How long an allocation's sweep leaves a freshly released lease to its background worker (issue 23).
const RELEASING_GRACE_S: u64 = 30;

/// Why a destroy did not happen.
pub(super) enum DestroyError {
    /// The instance runs processes (or the driver says IN_USE): never destroy it now.
    Busy,
    Other(GpuError),
}

/// Destroy an instance migrun created: its compute instances first, then the GPU instance.
/// `crash` names the release crash points (only for a release, not for gc repairs).
pub(super) fn destroy(
    backend: &mut dyn Backend,
    g: &GpuState,
    i: &GpuInstance,
    crash: bool,
) -> Result<(), DestroyError> {
    if i.processes > 0 {
        return Err(DestroyError::Busy);
    }
    let map = |e: GpuError| match e.code() {
        Some(Code::InUse) => DestroyError::Busy,
        _ => DestroyError::Other(e),
    };
    for c in &i.compute_instances {
        match backend.destroy_ci(g.info.index, i.id, c.id) {
            Ok(()) => {}
            // Already gone (a concurrent admin, or our own interrupted attempt): carry on.
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(map(e)),
        }
    }
    if crash {
        crash_point("release-after-destroy-ci");
    }
    match backend.destroy_gi(g.info.index, i.id) {
        Ok(()) => {}
        Err(e) if e.code() == Some(Code::NotFound) => {}
        Err(e) => return Err(map(e)),
    }
    if crash {
        crash_point("release-after-destroy-gi");
    }
    Ok(())
}

fn holder_alive(lease_id: LeaseId, h: &Holder, probe: &dyn HolderProbe) -> bool {
    match h {
        Holder::Process { pid, start_time } => lease::process_alive(*pid, *start_time),
        // The engine's word wins; when it cannot be asked, a recorded init pid decides; else keep the lease.
        Holder::Container { id, engine, pid } => match probe.container_alive(id, engine) {
            Some(alive) => alive,
            None => pid.is_none_or(|(p, st)| lease::process_alive(p, st)),
        },
        // Before docker wrote the container id, the launcher, the docker client it recorded before docker ran, or a
        // container labelled with this launch may use the slice (a slow pull can outlive a killed launcher).
        Holder::Launcher {
            pid,
            start_time,
            client,
            engine,
            launch,
        } => {
            lease::process_alive(*pid, *start_time)
                || client.is_some_and(|(p, st)| {
                    lease::process_alive(p, st)
                        || probe.launched_alive(lease_id, launch, engine) != Some(false)
                })
        }
        // The step daemon migrun recorded still runs, or Slurm still lists the step (a step whose slurmstepd died is
        // over on this node once slurmctld forgets it). What the job says about itself never counts.
        Holder::Slurm {
            step,
            pid,
            start_time,
        } => lease::process_alive(*pid, *start_time) || probe.slurm_step_alive(step) == Some(true),
        Holder::Manual => true,
    }
}

pub(super) fn keeps(l: &Lease, config: &Config) -> bool {
    l.keep || config.release == ReleasePolicy::Keep
}

/// What ending a lease needs after [`begin_end`]: nothing more, or destroying the instance (CI, then GI).
pub(super) enum Ending {
    Done(ReleaseOutcome),
    Destroy(Box<DestroyJob>),
}

/// A draining lease and the instance to destroy for it.
pub(crate) struct DestroyJob {
    pub lease: Lease,
    pub gpu: GpuState,
    pub instance: GpuInstance,
}

/// What ending a lease under the lock left to do: nothing, or a destroy claimed for after the lock (`drain`).
pub(super) enum Step {
    Done(ReleaseOutcome),
    Claimed(Box<super::drain::Job>),
}

/// End a lease (under the lock): drop it, or mark it draining and claim the destroy of the instance migrun created,
/// which the caller makes after dropping the lock (`drain::run`).
pub(super) fn end_lease(
    reg: &Registry,
    config: &Config,
    state: &mut MigState,
    l: Lease,
    reason: EndReason,
    purpose: super::drain::Purpose,
) -> Result<Step, AllocError> {
    // A compute-instance lease: its GPU instance may hold other leases' compute instances, which the whole-instance
    // path below knows nothing of.
    if l.ci_profile.is_some() {
        return super::share_end::begin_end(reg, config, state, l, reason, purpose);
    }
    match begin_end(reg, config, state, l, reason)? {
        Ending::Done(o) => Ok(Step::Done(o)),
        // Busy: nothing to claim; it stays draining until its processes end.
        Ending::Destroy(job) if job.instance.processes > 0 => {
            Ok(Step::Done(ReleaseOutcome::Draining {
                lease: job.lease.id,
                mig_uuid: job.lease.mig_uuid.clone(),
            }))
        }
        Ending::Destroy(job) => Ok(Step::Claimed(Box::new(super::drain::claim_lease(
            reg, job, purpose,
        )?))),
    }
}

/// After the destroy of a draining lease's instance (under the lock): drop its records, or leave it draining.
pub(super) fn end_destroyed(
    reg: &Registry,
    state: &mut MigState,
    l: Lease,
    destroyed: Result<(), DestroyError>,
) -> Result<ReleaseOutcome, AllocError> {
    let mig_uuid = l.mig_uuid.clone();
    match destroyed {
        Ok(()) => {
            forget(state, &l.gpu_uuid, l.gi);
            forget_lease_record(reg, &l)?;
            crash_point("release-after-remove-record");
            reg.remove_lease(l.id)?;
            Ok(ReleaseOutcome::Destroyed {
                lease: l.id,
                mig_uuid,
            })
        }
        Err(DestroyError::Busy) => Ok(ReleaseOutcome::Draining {
            lease: l.id,
            mig_uuid,
        }),
        Err(DestroyError::Other(e)) => Err(e.into()),
    }
}

/// The part of ending a lease that needs no driver call (under the lock): log the end, drop a lease whose
/// instance migrun keeps or did not create, or mark it draining and say which instance to destroy.
pub(super) fn begin_end(
    reg: &Registry,
    config: &Config,
    state: &mut MigState,
    mut l: Lease,
    reason: EndReason,
) -> Result<Ending, AllocError> {
    // Only whole-instance leases come here: callers send a compute-instance lease through [`end_lease`] (`share`).
    let mig_uuid = l.mig_uuid.clone();
    // The ledger hears of the end before any record changes: a crash after this leaves a draining or removed
    // lease whose end is written, and gc's later end for it counts once (docs/operations.md).
    if l.state == LeaseState::Active {
        reg.log_end(&l, reason);
    }
    // A lease file alone never licenses a destroy: the created/ record, written only by migrun's own
    // create, must name the same instance (GI, profile, placement, MIG UUID). A crafted or stale lease
    // claiming `created` for someone else's instance is dropped and the instance left alone.
    let ours = l.created && (lease_instance(state, &l).is_none() || recorded_as_ours(reg, &l)?);
    if l.created && !ours {
        tracing::warn!(lease = l.id, mig = %l.mig_uuid, "lease claims created=true but no created/ record matches; not destroying");
    }
    if !ours || (keeps(&l, config) && l.state == LeaseState::Active) {
        let whole = lease_whole(state, &l);
        reg.remove_lease(l.id)?;
        if !whole {
            return Ok(Ending::Done(ReleaseOutcome::Gone {
                lease: l.id,
                mig_uuid,
            }));
        }
        if ours {
            stamp_idle(reg, &l)?;
        }
        let why = if ours {
            "kept warm for reuse (--keep or config release = \"keep\")"
        } else if l.created {
            "the lease says migrun created it, but no created/ record matches the instance, so migrun leaves it alone"
        } else {
            "migrun did not create it"
        };
        return Ok(Ending::Done(ReleaseOutcome::Kept {
            lease: l.id,
            mig_uuid,
            why: why.into(),
        }));
    }
    // Journal the release first: from here on a crash leaves a draining lease that gc finishes.
    let was_draining = l.state == LeaseState::Draining;
    if !was_draining {
        l.state = LeaseState::Draining;
        l.updated_at = lease::now();
        reg.write_lease(&l)?;
        crash_point("release-after-mark-draining");
    }
    let Some((g, i)) = lease_instance(state, &l) else {
        forget_lease_record(reg, &l)?;
        reg.remove_lease(l.id)?;
        return Ok(Ending::Done(ReleaseOutcome::vanished(
            was_draining,
            l.id,
            mig_uuid,
        )));
    };
    Ok(Ending::Destroy(Box::new(DestroyJob {
        gpu: g.clone(),
        instance: i.clone(),
        lease: l,
    })))
}

/// Reconcile the registry with the device (under the lock) and return the resulting snapshot, with the destroys it
/// claimed (the caller makes them with `drain::run` after dropping the lock).
///
/// 1. Intents left by crashed allocations: an instance they created that no lease holds is to be destroyed.
/// 2. Leases: an active lease whose instance vanished is dropped; one whose holder is dead is
///    released; a draining one gets another destroy attempt.
/// 3. Created-instance records whose instance is gone are dropped.
pub(crate) fn sweep(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    probe: &dyn HolderProbe,
    report: &mut GcReport,
) -> Result<(MigState, Vec<super::drain::Job>), AllocError> {
    let s = sweep_records(backend, reg, config, probe, report, false)?;
    Ok((s.state, s.jobs))
}

/// What a sweep leaves: the device state and the registry's records, as they are after it, and the destroys it
/// claimed, which the caller makes once it dropped the lock (`drain::run`).
pub(crate) struct Swept {
    pub state: MigState,
    pub leases: Vec<Lease>,
    pub created: Vec<CreatedRecord>,
    pub jobs: Vec<super::drain::Job>,
}

/// [`sweep`], also returning the leases and created-instance records it read, so the caller (under the same
/// lock) does not read every lease file again: on a busy host that is one file per running container, and the
/// allocation runs in every container's start.
pub(crate) fn sweep_records(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    probe: &dyn HolderProbe,
    report: &mut GcReport,
    leave_releasing: bool,
) -> Result<Swept, AllocError> {
    let mut state = backend.snapshot()?;
    // Before any record is acted on: the records must be about this machine's GPUs.
    binding::bind(reg.dir(), &backend.kind(), &state, config)?;
    let first = reg.leases()?;
    // An intent whose process still runs is driver work in flight outside the lock (`inflight`): a create
    // (planners see it as taken) or a release's destroy (its draining lease is that process's to finish).
    let (in_flight, intents): (Vec<Intent>, Vec<Intent>) =
        reg.intents()?.into_iter().partition(Intent::in_flight);
    // An allocation's sweep also leaves a lease a container's end left releasing moments ago to its worker (which
    // may not have claimed it yet) and to a request that can take the instance over; `migrun gc` does not wait.
    // A compute-instance lease has no worker (it is released under the lock), so a busy one is retried at once.
    let now = lease::now();
    let destroying = |l: &Lease| {
        in_flight.iter().any(|i| i.destroy && i.lease == l.id)
            || (leave_releasing
                && l.ci_profile.is_none()
                && now.saturating_sub(l.updated_at) < RELEASING_GRACE_S)
    };
    // What a create in flight is making is not for this sweep to judge: a half-made GI may even carry the GI id of a
    // draining lease whose instance is gone (the driver reuses ids), and must not be destroyed for it. A planner never
    // reserves a place an instance of a live lease holds, so nothing leased is hidden here.
    // A compute instance reserved in a recorded sharing GPU instance hides nothing: that GPU instance holds other
    // leases' compute instances, which the sweep must see.
    for i in in_flight
        .iter()
        .filter(|i| !i.destroy && !super::inflight::is_slot(i))
    {
        if let Some(g) = state.gpus.iter_mut().find(|g| g.info.uuid == i.gpu_uuid) {
            g.instances
                .retain(|x| !(x.placement == i.placement && x.profile_id == i.profile_id));
        }
    }
    // Any repair or release below rewrites lease files; then they are read again.
    let mut changed = !intents.is_empty();

    let mut jobs = Vec::new();
    for intent in intents {
        if let Some(job) = repair_intent(backend, reg, &mut state, &first, &intent, report)? {
            crash_point("gc-after-claim");
            jobs.push(job);
        }
    }

    for l in first.iter() {
        let whole = lease_whole(&state, l);
        let outcome = match l.state {
            LeaseState::Draining if destroying(l) => None,
            LeaseState::Active if !whole => {
                // Never destroy here: a changed instance is not the one we leased.
                reg.log_end(l, EndReason::InstanceGone);
                reg.remove_lease(l.id)?;
                let gone = ReleaseOutcome::Gone {
                    lease: l.id,
                    mig_uuid: l.mig_uuid.clone(),
                };
                Some((Step::Done(gone), Purpose::HolderGone))
            }
            LeaseState::Active if holder_alive(l.id, &l.holder, probe) => None,
            LeaseState::Active => {
                report
                    .notes
                    .push(format!("lease {}: holder {} is gone", l.id, l.holder));
                let step = end_lease(
                    reg,
                    config,
                    &mut state,
                    l.clone(),
                    EndReason::HolderGone,
                    Purpose::HolderGone,
                )?;
                Some((step, Purpose::HolderGone))
            }
            LeaseState::Draining => {
                let step = end_lease(
                    reg,
                    config,
                    &mut state,
                    l.clone(),
                    EndReason::Released,
                    Purpose::Drained,
                )?;
                Some((step, Purpose::Drained))
            }
        };
        changed |= outcome.is_some();
        match outcome {
            // The destroy is made after the lock is dropped (`drain::run`), by whoever called the sweep.
            Some((Step::Claimed(job), _)) => {
                crash_point("gc-after-claim");
                jobs.push(*job);
            }
            Some((Step::Done(o), purpose)) => super::drain::record_end(report, &purpose, o),
            None => {}
        }
    }

    let leases = if changed { reg.leases()? } else { first };
    let mut created = Vec::new();
    for r in reg.created()? {
        let leased = leases
            .iter()
            .any(|l| l.gpu_uuid == r.gpu_uuid && l.gi == r.gi);
        if !leased && !record_matches(&state, &r) {
            reg.remove_created(&r.gpu_uuid, r.gi)?;
            report.notes.push(format!(
                "forgot GI {} on {}: the instance migrun kept is gone",
                r.gi, r.gpu_uuid
            ));
        } else {
            created.push(r);
        }
    }
    // Records skipped as not migrun's (a field that cannot be, e.g. a path for a UUID) are reported, never used.
    report.notes.extend(reg.take_skipped());
    Ok(Swept {
        state,
        leases,
        created,
        jobs,
    })
}
