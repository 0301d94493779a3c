//! Destroys claimed under the allocation lock and made outside it (issue 23): what a sweep ends (dead holders' and
//! draining leases, instances left by interrupted allocations), evictions of kept instances, expiries, and
//! compute-instance releases. It must not plan or decide what ends: it carries out what its callers claimed.
//!
//! Why: destroying a GPU instance takes about a second on real hardware; under the host-wide lock every other
//! request, release and gc would wait for it. So each destroy is *claimed* under the lock by an intent with this
//! process's pid and start time (`destroy: true`): while the process lives, sweeps leave the claimed lease alone and
//! planners see the instance as taken (`inflight::overlay`); if it dies, gc repairs the intent as any other
//! (`reconcile::repair_intent`). The driver call runs without the lock; the records change under it again.

use super::reconcile::{destroy, end_destroyed, forget_record, DestroyError, DestroyJob};
use super::testhook::crash_point;
use super::{AllocError, GcReport, ReleaseOutcome};
use crate::gpu::{Backend, Code, GpuInstance, GpuState, MigState};
use crate::lease::{self, CiIntent, CreatedRecord, Intent, Lease, LeaseId, Registry};

/// What a claimed destroy is for: which crash points it passes and how its result is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A lease whose holder is gone (a sweep).
    HolderGone,
    /// A draining lease finished (a sweep).
    Drained,
    /// `migrun release` or a worker ending a lease.
    Released,
    /// What an interrupted allocation left (a sweep); the text names it for the report.
    Repair(String),
    /// An idle kept instance destroyed to make room for a request.
    Evict,
    /// A kept instance idle for `keep_idle_s` (gc); the text names it for the report.
    Expire(String),
}

impl Purpose {
    /// The crash-point prefix of its steps (`testhook::GC_STEPS`, `EVICT_STEPS`, `EXPIRE_STEPS`).
    fn steps(&self) -> &'static str {
        match self {
            Purpose::HolderGone | Purpose::Drained | Purpose::Repair(_) => "gc",
            Purpose::Released => "release",
            Purpose::Evict => "evict",
            Purpose::Expire(_) => "expire",
        }
    }
}

/// The instance a claim names.
pub(crate) enum Kind {
    /// A draining whole-instance lease: CI, then GI. The claim's id is the lease's.
    Lease(Box<DestroyJob>),
    /// A compute instance of a sharing GPU instance (a lease's, or one an interrupted allocation journalled), then
    /// that GPU instance if nothing is left in it; whether it goes is decided under the lock once the compute
    /// instance is gone.
    Ci(Box<CiJob>),
    /// A whole instance no lease holds (an interrupted create's, an eviction's, an expiry's), with its created record.
    Orphan(Box<Orphan>),
}

/// The instance of a [`Kind::Orphan`] claim.
pub(crate) struct Orphan {
    pub gpu: GpuState,
    pub instance: GpuInstance,
    pub record: Option<CreatedRecord>,
}

/// The compute-instance part of a [`Kind::Ci`] claim.
pub(crate) struct CiJob {
    pub gpu: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    /// The compute instance to destroy (its id), if there is one left.
    pub ci: Option<u32>,
    /// The lease it ends (a release); `None` for a repair.
    pub lease: Option<Lease>,
    /// A repair may destroy the GPU instance only if its allocation created it (`CiIntent::new_gi`); a lease's
    /// sharing GPU instance goes unless the lease or the config keeps it.
    pub gi_may_go: bool,
}

/// A destroy claimed under the lock, to be made without it by [`run`].
pub(crate) struct Job {
    /// The intent written under the lock (this process's pid and start time, `destroy: true`).
    pub claim: Intent,
    /// The intent to put back (without a start time, so gc retries) when the destroy cannot be made now:
    /// an interrupted allocation's own intent. `None`: the claim is simply dropped.
    pub restore: Option<Intent>,
    pub kind: Kind,
    pub purpose: Purpose,
}

/// `intent` as this process's claim: its pid and start time, `destroy: true`.
pub(super) fn as_claim(intent: &Intent) -> Intent {
    let pid = std::process::id();
    Intent {
        pid,
        start_time: lease::process_start_time(pid),
        destroy: true,
        ..intent.clone()
    }
}

/// This process's claim on the destroy of lease `l`'s instance on GPU `gpu_index` (its id is the lease's); `ci`
/// names the compute instance for a compute-instance lease. The caller writes it under the lock.
pub(super) fn lease_claim(l: &Lease, gpu_index: u32, ci: Option<CiIntent>) -> Intent {
    as_claim(&Intent {
        lease: l.id,
        gpu_index,
        gpu_uuid: l.gpu_uuid.clone(),
        profile_id: l.profile_id,
        profile: l.profile.clone(),
        placement: l.placement,
        gi: Some(l.gi),
        ci,
        pid: 0,
        created_at: lease::now(),
        start_time: None,
        uid: None,
        name: None,
        destroy: true,
    })
}

/// Write a claim (under the lock) for the destroy of an instance no lease holds, under a fresh intent id; a
/// sharing GPU instance's claim says so (`ci`), so that gc, repairing it after a crash, destroys it only while empty.
pub(super) fn claim_orphan(
    reg: &Registry,
    g: &GpuState,
    i: &GpuInstance,
    record: Option<&CreatedRecord>,
    purpose: Purpose,
) -> Result<Job, AllocError> {
    let shared = record.is_some_and(|r| r.shared);
    let claim = as_claim(&Intent {
        lease: reg.next_lease_id()?,
        gpu_index: g.info.index,
        gpu_uuid: g.info.uuid.clone(),
        profile_id: i.profile_id,
        profile: record.map_or_else(
            || format!("profile {}", i.profile_id),
            |r| r.profile.clone(),
        ),
        placement: i.placement,
        gi: Some(i.id),
        ci: shared.then_some(CiIntent {
            new_gi: true,
            profile_id: None,
            start: None,
            id: None,
        }),
        pid: 0,
        created_at: lease::now(),
        start_time: None,
        uid: None,
        name: None,
        destroy: true,
    });
    reg.write_intent(&claim)?;
    Ok(Job {
        claim,
        restore: None,
        kind: Kind::Orphan(Box::new(Orphan {
            gpu: g.clone(),
            instance: i.clone(),
            record: record.cloned(),
        })),
        purpose,
    })
}

/// Claim a draining whole-instance lease's destroy (under the lock): the intent carries the lease's id.
pub(super) fn claim_lease(
    reg: &Registry,
    job: Box<DestroyJob>,
    purpose: Purpose,
) -> Result<Job, AllocError> {
    let claim = super::inflight::claim(reg, &job.lease)?;
    Ok(Job {
        claim,
        restore: None,
        kind: Kind::Lease(job),
        purpose,
    })
}

/// Carry out claimed destroys without the lock (each one's records change under it), reporting the ends of leases
/// as a sweep does. Every job is tried; the first driver error is returned after all of them ran, and a failed job's
/// claim is dropped (gc retries what is left).
pub(super) fn run(
    backend: &mut dyn Backend,
    reg: &Registry,
    jobs: Vec<Job>,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    run_with(backend, reg, jobs, report, false)
}

/// [`run`] for a caller that holds the lock already (teardown, which destroys under it on purpose).
pub(super) fn run_locked(
    backend: &mut dyn Backend,
    reg: &Registry,
    jobs: Vec<Job>,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    run_with(backend, reg, jobs, report, true)
}

/// Run one job claimed for a release (the lock not held) and say how the lease ended.
pub(super) fn run_release(
    backend: &mut dyn Backend,
    reg: &Registry,
    job: Job,
) -> Result<ReleaseOutcome, AllocError> {
    let (id, restore) = (job.claim.lease, job.restore.clone());
    let mut report = GcReport::default();
    match run_one(backend, reg, job, &mut report, false) {
        Ok(o) => Ok(o.unwrap_or(ReleaseOutcome::NoLease)),
        Err(e) => {
            if let Ok(_lock) = reg.lock() {
                let _ = unclaim_on_error(reg, id, restore);
            }
            Err(e)
        }
    }
}

fn run_with(
    backend: &mut dyn Backend,
    reg: &Registry,
    jobs: Vec<Job>,
    report: &mut GcReport,
    locked: bool,
) -> Result<(), AllocError> {
    let mut first = None;
    for job in jobs {
        let id = job.claim.lease;
        let restore = job.restore.clone();
        let purpose = job.purpose.clone();
        let res = run_one(backend, reg, job, report, locked);
        if let Ok(Some(o)) = res {
            record_end(report, &purpose, o);
        } else if let Err(e) = res {
            // Hand what is left back to gc: the interrupted allocation's intent as it was, or no claim at all.
            let _guard = if locked { None } else { reg.lock().ok() };
            let _ = unclaim_on_error(reg, id, restore);
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

pub(super) fn lock_unless(
    reg: &Registry,
    locked: bool,
) -> Result<Option<crate::statedir::Lock>, AllocError> {
    Ok(if locked { None } else { Some(reg.lock()?) })
}

/// After a failed job (under the lock): hand its claim back as [`unclaim`] does, unless the job already handed it to
/// gc itself (a claim without a start time, or none left).
fn unclaim_on_error(
    reg: &Registry,
    id: LeaseId,
    restore: Option<Intent>,
) -> Result<(), AllocError> {
    let mine = reg
        .intents()?
        .iter()
        .any(|i| i.lease == id && i.pid == std::process::id() && i.start_time.is_some());
    if mine {
        unclaim(reg, id, restore)?;
    }
    Ok(())
}

/// Put an interrupted allocation's intent back for gc (without a start time), or drop the claim.
pub(super) fn unclaim(
    reg: &Registry,
    job_claim: LeaseId,
    restore: Option<Intent>,
) -> Result<(), AllocError> {
    match restore {
        Some(r) => reg.write_intent(&Intent {
            start_time: None,
            ..r
        })?,
        None => reg.remove_intent(job_claim)?,
    }
    Ok(())
}

/// One job; a lease's end is returned (the caller reports it), anything else goes into `report`.
fn run_one(
    backend: &mut dyn Backend,
    reg: &Registry,
    job: Job,
    report: &mut GcReport,
    locked: bool,
) -> Result<Option<ReleaseOutcome>, AllocError> {
    let Job {
        claim,
        restore,
        kind,
        purpose,
    } = job;
    let steps = purpose.steps();
    if steps != "release" {
        crash_point(&format!("{steps}-unlocked"));
    }
    match kind {
        Kind::Lease(job) => {
            let DestroyJob {
                lease,
                gpu,
                instance,
            } = *job;
            let destroyed = destroy(backend, &gpu, &instance, true);
            if steps != "release" {
                crash_point(&format!("{steps}-after-destroy"));
            }
            let _lock = lock_unless(reg, locked)?;
            let mut scratch = MigState { gpus: Vec::new() };
            let o = end_destroyed(reg, &mut scratch, lease, destroyed);
            reg.remove_intent(claim.lease)?;
            return o.map(Some);
        }
        Kind::Orphan(o) => {
            let Orphan {
                gpu,
                instance,
                record,
            } = *o;
            let destroyed = destroy(backend, &gpu, &instance, false);
            crash_point(&format!("{steps}-after-destroy"));
            let _lock = lock_unless(reg, locked)?;
            let what = match &purpose {
                Purpose::Repair(w) | Purpose::Expire(w) => w.clone(),
                _ => format!(
                    "GPU {} GI {} ({} at {})",
                    gpu.info.index, instance.id, claim.profile, instance.placement
                ),
            };
            match destroyed {
                Ok(()) => {
                    if let Some(r) = &record {
                        forget_record(reg, &r.gpu_uuid, r.gi, &r.mig_uuid, r.placement)?;
                    }
                    reg.remove_intent(claim.lease)?;
                    match purpose {
                        Purpose::Evict => tracing::info!(
                            gpu = gpu.info.index,
                            gi = instance.id,
                            "destroyed an idle kept instance to make room"
                        ),
                        _ => report.repaired.push(format!("{what}: destroyed")),
                    }
                }
                Err(DestroyError::Busy) => {
                    unclaim(reg, claim.lease, restore)?;
                    if matches!(purpose, Purpose::Repair(_)) {
                        report.notes.push(format!(
                            "{what} is in use; gc will destroy it once it is idle"
                        ));
                    }
                }
                Err(DestroyError::Other(e)) => return Err(e.into()),
            }
        }
        Kind::Ci(job) => {
            let ctx = super::share_end::CiRun {
                claim,
                restore,
                locked,
            };
            return super::share_end::run_ci(backend, reg, ctx, *job, report);
        }
    }
    Ok(None)
}

/// Report how a lease's end came out, as the sweep did when it destroyed under the lock.
pub(super) fn record_end(report: &mut GcReport, purpose: &Purpose, o: ReleaseOutcome) {
    match &o {
        ReleaseOutcome::Draining { lease, mig_uuid } => {
            report.notes.push(format!(
                "lease {lease}: {mig_uuid} is still in use; it stays draining"
            ));
            return;
        }
        ReleaseOutcome::Destroyed { .. } => match purpose {
            Purpose::HolderGone => report.destroyed += 1,
            Purpose::Drained => report.drained += 1,
            _ => {}
        },
        _ => {}
    }
    tracing::info!(outcome = %o, "gc");
    report.released.push(o);
}

/// The GPU instance a compute-instance job leaves: does it hold nothing now, so that it may go? Nothing on the device
/// (no compute instance, no process), no other lease in it, no create in flight into it (asked under the lock).
pub(super) fn gi_empty(
    backend: &mut dyn Backend,
    reg: &Registry,
    gpu: u32,
    gpu_uuid: &str,
    gi: u32,
    except: LeaseId,
) -> Result<bool, AllocError> {
    let others = reg
        .leases()?
        .iter()
        .any(|o| o.id != except && o.gpu_uuid == gpu_uuid && o.gi == gi);
    let coming = reg.intents()?.iter().any(|i| {
        i.lease != except
            && i.in_flight()
            && !i.destroy
            && i.gpu_uuid == gpu_uuid
            && i.gi == Some(gi)
    });
    if others || coming {
        return Ok(false);
    }
    match backend.ci_placements(gpu, gi) {
        Ok(cis) => Ok(cis.is_empty()),
        Err(e) if e.code() == Some(Code::NotFound) => Ok(true),
        Err(e) => Err(e.into()),
    }
}
