//! One allocation from start to grant: reconcile (and make the destroys the sweep claimed), check the limits, plan,
//! evict kept instances for room, reserve or reuse under the lock, build outside it, and wait in the queue when asked;
//! it must not parse engine formats or print.
//!
//! Every step that touches the driver runs without the allocation lock (issue 23, docs/leases.md "Driver calls
//! outside the lock"): the planner sees live reservations and claimed destroys as taken, so two requests never get
//! the same placement or compute-instance slot.

use super::account::{self, registry};
use super::apply::{self, apply, Applied};
use super::reconcile::{sweep_records, Swept};
use super::request::{check_limits, check_name, plan_request, unsatisfiable};
use super::{
    drain, inflight, share, wait, AllocError, AllocRequest, GcReport, HolderProbe, ReleaseOutcome,
};
use crate::config::Config;
use crate::gpu::{Backend, Code};
use crate::lease::{Lease, LeaseId, Registry};
use crate::policy::plan;
use crate::statedir::StateDir;
use std::time::Instant;

/// How often one allocation destroys kept instances to make room (another request may take the room it freed before
/// it plans again; then it gives up as when no room was found).
const EVICT_ROUNDS: usize = 2;

/// How long a compute-instance request without room waits for sharing GPU instances other requests are making.
const GI_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often an allocation re-plans when the driver refuses a create because the placement was taken meanwhile.
const CREATE_RETRIES: usize = 2;

/// What [`allocate_swept`] granted, and what the caller does about it.
#[derive(Debug)]
pub(crate) struct Granted {
    pub lease: Lease,
    /// Leases its reconciliation ended on the way (dead holders', drained ones): their CDI specs go.
    pub swept: Vec<LeaseId>,
    /// It took an instance the `warm` setting keeps: the caller starts the pool's background refill
    /// (`migrun __refill-warm`), so the next request finds one ready without anyone running gc.
    pub refill: bool,
}

/// [`allocate`], also returning the leases its reconciliation ended on the way (dead holders',
/// drained ones), so the caller can drop what belonged to them (their CDI specs) without reading
/// the registry again, and whether the warm pool is one short.
pub(crate) fn allocate_swept(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
) -> Result<Granted, AllocError> {
    allocate_with(backend, dir, config, req, probe, Trail::default())
}

/// [`allocate_swept`] for the warm pool's own allocations (`idle::warm_up`): taking a warm instance there starts no
/// refill (it is the refill).
pub(super) fn allocate_quiet(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
) -> Result<Granted, AllocError> {
    let trail = Trail {
        quiet: true,
        ..Trail::default()
    };
    allocate_with(backend, dir, config, req, probe, trail)
}

fn allocate_with(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
    mut trail: Trail,
) -> Result<Granted, AllocError> {
    let reg = registry(dir, config, backend)?;
    let started = Instant::now();
    let out = allocate_in(backend, &reg, config, req, probe, started, &mut trail);
    let late = std::mem::take(&mut trail.jobs);
    if !late.is_empty() {
        // Best effort: what fails stays claimed by nobody, and gc finishes it.
        if let Err(e) = drain_now(backend, &reg, late, &mut trail) {
            tracing::warn!(error = %e, "finishing destroys claimed by this allocation's sweep");
        }
    }
    account::outcome(&reg, req, &out, trail.queued.then(|| started.elapsed()));
    // The warm pool is one short: the caller starts a detached worker to make another, so this request does not
    // wait for it (not for the pool's own allocations: they are the refill).
    let refill = trail.took_warm && !trail.quiet;
    out.map(|lease| Granted {
        lease,
        swept: trail.swept,
        refill,
    })
}

/// What an allocation did on the way, whatever its outcome: whether it queued (its wait is accounted)
/// and which leases its reconciliation ended (their CDI specs go).
#[derive(Default)]
struct Trail {
    queued: bool,
    swept: Vec<LeaseId>,
    /// Its sweep's claimed destroys were made once already; `jobs`: destroys claimed after that, made at the end.
    drained: bool,
    jobs: Vec<drain::Job>,
    /// It took an idle instance the `warm` setting keeps (`refill::took_warm`); `quiet`: it is the warm pool's own.
    took_warm: bool,
    quiet: bool,
}

/// Make destroys a sweep claimed (the lock not held), account them, and note the leases they ended.
fn drain_now(
    backend: &mut dyn Backend,
    reg: &Registry,
    jobs: Vec<drain::Job>,
    trail: &mut Trail,
) -> Result<(), AllocError> {
    let mut done = GcReport::default();
    let r = drain::run(backend, reg, jobs, &mut done);
    account::gc(reg, &done);
    trail
        .swept
        .extend(done.released.iter().filter_map(ReleaseOutcome::lease));
    r
}

/// [`allocate_swept`] on an opened registry, noting in `trail` what it did on the way.
fn allocate_in(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
    started: Instant,
    trail: &mut Trail,
) -> Result<Lease, AllocError> {
    let reg = reg.clone();
    let mut queue = wait::Queue::new(&reg, req);
    let mut retries = 0;
    let mut evictions = 0;
    loop {
        // A waiter looks again after a release or every second; a newcomer looks at once.
        let mut ahead = queue.ahead()?;
        if queue.due() || !queue.has_ticket() {
            let lock = reg.lock()?;
            let (held, n_ahead) = queue.held_ahead_locked()?;
            ahead = n_ahead;
            queue.planning();
            let mut report = GcReport::default();
            let Swept {
                mut state,
                mut leases,
                created,
                jobs,
            } = sweep_records(backend, &reg, config, probe, &mut report, true)?;
            // Creates of other processes in flight (outside the lock) hold their places, limits and names.
            let intents = reg.intents()?;
            inflight::overlay(&mut state, &mut leases, &intents);
            if !report.is_empty() {
                tracing::info!(?report, "reconciled before allocating");
                account::gc(&reg, &report);
            }
            trail
                .swept
                .extend(report.released.iter().filter_map(ReleaseOutcome::lease));
            // Destroys the sweep claimed (dead holders', drained, interrupted allocations') run without the lock: the
            // first time before planning (the room they free may be what this request needs), then plan again; any
            // claimed later are made once this request is done (`Trail::jobs`).
            if !jobs.is_empty() {
                if trail.drained {
                    trail.jobs.extend(jobs);
                } else {
                    trail.drained = true;
                    drop(lock);
                    drain_now(backend, &reg, jobs, trail)?;
                    continue;
                }
            }
            if state.gpus.is_empty() {
                return Err(AllocError::NoGpus);
            }
            // Checked under the lock, after the sweep freed dead holders' leases, so two
            // concurrent requests cannot both take the last allowed lease.
            check_limits(config, &leases, req.uid)?;
            check_name(&leases, req.name.as_ref())?;
            // An instance still releasing (draining, its destroy not claimed yet) is free for the planner: a request
            // of its profile takes it over instead of a destroy and a create. Never a compute-instance lease's.
            let releasing = inflight::releasing(&state, &leases, &created, &intents);
            let leases: Vec<Lease> = leases
                .into_iter()
                .filter(|l| !releasing.iter().any(|r| r.id == l.id))
                .collect();
            let mut full = plan_request(&state, config, req, &created, &leases)?;
            // A compute-instance request needs migrun's sharing GPU instances as the device has them now.
            if matches!(full.want, plan::Want::Ci(_)) {
                full.ci.shared = share::shared_gis(backend, &state, &created, &leases)?;
                // Slots other requests reserved and are making now are taken.
                inflight::overlay_shared(&mut full.ci.shared, &state, &intents);
            }
            // What could never fit is said at once, whoever waits; what fits now, but only on
            // GPUs that earlier waiters hold back, waits behind them.
            let unqueued = match plan::plan(&state, &leases, &full) {
                Err(nr) if !nr.can_wait() => return Err(unsatisfiable(&state, &full, nr)),
                r => r,
            };
            let fits_ignoring_queue = unqueued.is_ok();
            let mut preq = full.clone();
            // With no GPU held back the request is the same, and the planner is pure: its answer stands.
            let planned = if held.is_empty() {
                unqueued
            } else {
                let mine: Vec<u32> = state
                    .gpus
                    .iter()
                    .map(|g| g.info.index)
                    .filter(|i| full.gpus.as_ref().is_none_or(|a| a.contains(i)))
                    .filter(|i| !held.contains(i))
                    .collect();
                preq.gpus = Some(mine);
                plan::plan(&state, &leases, &preq)
            };
            if matches!(&planned, Err(nr) if nr.can_wait()) && evictions < EVICT_ROUNDS {
                if let Some(victims) = plan::evictions(&state, &leases, &preq) {
                    let jobs = apply::claim_evictions(&reg, &state, &victims)?;
                    if !jobs.is_empty() {
                        // Destroyed without the lock (planners see them as taken meanwhile); then plan again.
                        evictions += 1;
                        drop(lock);
                        let mut done = GcReport::default();
                        drain::run(backend, &reg, jobs, &mut done)?;
                        continue;
                    }
                }
            }
            // A compute-instance request that would make a new sharing GPU instance while another request is making
            // one it could join waits for that one instead (it will have free compute slots): a burst of `1c`
            // requests then fills one GPU instance before it makes the next, as requests one at a time do.
            if let Ok(plan::Plan::NewShared { choice, .. }) = &planned {
                if inflight::joinable_gi_in_the_making(
                    &intents,
                    choice.gpu,
                    choice.profile_id,
                    req.uid,
                    config.share_gi_across_users,
                ) && started.elapsed() < GI_WAIT
                {
                    drop(lock);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
            }
            // Someone outside migrun (an admin's nvidia-smi) may take the chosen placement between
            // our snapshot and the create; the driver then says INSUFFICIENT_RESOURCES. Look again.
            if let Ok(p) = &planned {
                inflight::take_over(&reg, p, &releasing)?;
                let applied = match apply(&reg, &state, p, req) {
                    Err(e)
                        if retries < CREATE_RETRIES
                            && inflight::gpu_code(&e) == Some(Code::InsufficientResources) =>
                    {
                        tracing::info!(error = %e, "placement taken under us; planning again");
                        retries += 1;
                        drop(lock);
                        continue;
                    }
                    r => r?,
                };
                // The driver work runs without the lock: other requests plan, reuse and release meanwhile.
                let built = match applied {
                    Applied::Leased(lease) => {
                        trail.took_warm = super::refill::took_warm(config, &state, &lease);
                        Ok(lease)
                    }
                    Applied::Reserved(r) => {
                        drop(lock);
                        inflight::build(backend, &reg, r)
                    }
                    Applied::ReservedCi(r) => {
                        drop(lock);
                        share::build(backend, &reg, r)
                    }
                };
                match built {
                    Ok(lease) => {
                        queue.done();
                        return Ok(lease);
                    }
                    Err(e)
                        if retries < CREATE_RETRIES
                            && inflight::gpu_code(&e) == Some(Code::InsufficientResources) =>
                    {
                        tracing::info!(error = %e, "placement taken under us; planning again");
                        retries += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            // A compute-instance request that found no room while another request is making a new sharing GPU
            // instance looks again once that one is made: it will have free compute slots (a burst of `1c`
            // requests would otherwise be refused while the first of them creates the GPU instance they share).
            if matches!(full.want, plan::Want::Ci(_))
                && inflight::gi_in_the_making(&intents)
                && started.elapsed() < GI_WAIT
            {
                drop(lock);
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            let Err(mut nr) = planned else {
                unreachable!("a plan either applied or returned an error above")
            };
            if !queue.waits() || queue.expired(started) {
                let waited = queue.waits().then(|| wait::clock(started.elapsed()));
                queue.done();
                // Room exists, but only where earlier waiters are first in line.
                if fits_ignoring_queue && ahead > 0 {
                    return Err(AllocError::Queued { ahead, waited });
                }
                nr.note = waited.map(|w| format!("waited {w}"));
                return Err(AllocError::NoRoom(Box::new(nr)));
            }
            queue.enqueue(started, plan::reservation(&state, &full, &held))?;
            trail.queued = true;
        }
        if queue.expired(started) {
            queue.done();
            return Err(AllocError::Queued {
                ahead,
                waited: Some(wait::clock(started.elapsed())),
            });
        }
        queue.pause(started, ahead);
    }
}
