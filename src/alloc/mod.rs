//! The allocator: applies the policy's plans through the hardware trait, rolls back, releases and collects garbage; it must not parse engine formats.
//!
//! This file holds the request and error types and the public operations (release, gc, the lease
//! queries); the steps live beside it: `allocate` (one allocation, start to grant), `request` (a request
//! and the config -> the planner's input, the lease limits), `reconcile` (sweep, end a lease, destroy),
//! `repair` (intents of interrupted allocations), `apply` (apply a plan, claim evictions), `inflight`
//! (reservations, overlays, releases outside the lock), `drain` (claimed destroys made outside the lock),
//! `share`/`share_end` (compute-instance slices), `idle`/`refill` (the warm pool), `wait` (the `--wait`
//! queue), `teardown`, `binding` (which machine a state dir is for) and `testhook` (crash points and fault
//! injection for tests). What to allocate is decided by the pure `policy` room; this room only carries it out.
//!
//! Engines tell this module whether a container holder is still alive through `HolderProbe`, so
//! gc never needs to know docker, podman or containerd.
//!
//! Every record changes under the registry lock (`alloc.lock`), but no driver create or destroy runs under it
//! (`inflight`, `drain`, issue 23): a create is planned and reserved (its intent journalled) under the lock, made
//! outside it and committed under it again; every destroy (a release's, gc's, an eviction's, an expiry's) is
//! claimed under the lock and made outside it. Planners see live reservations as taken, so two processes never pick the same instance or placement.
//! Before each allocation (and in `migrun gc`) the registry is reconciled with the device
//! (`sweep`): crashed allocations are repaired from their intents, leases of dead holders released,
//! draining instances destroyed (claimed in the sweep, destroyed after it), and leases of vanished instances
//! dropped. The on-disk protocol is
//! described in docs/leases.md.

mod account;
mod allocate;
mod apply;
pub mod binding;
mod detached;
mod drain;
mod idle;
mod inflight;
mod outcome;
mod reconcile;
pub(crate) mod refill;
mod repair;
mod request;
mod share;
mod share_end;
mod teardown;
pub mod testhook;
mod wait;

pub use account::ledger_of;
use account::registry;
pub(crate) use allocate::{allocate_swept, Granted};
pub(crate) use detached::{end_without_driver, Ended};
pub(crate) use inflight::finish_release;
pub(crate) use outcome::GcReport;
pub use outcome::ReleaseOutcome;
use reconcile::sweep;
pub(crate) use request::plan_request;
pub(crate) use share::shared_gis;
pub(crate) use teardown::{teardown, TeardownOptions, TeardownReport};
pub(crate) use wait::clock;

use crate::config::Config;
use crate::gpu::{Backend, GpuError};
use crate::lease::{self, CreatedRecord, Holder, Lease, LeaseError, LeaseId, LeaseName, Registry};
use crate::policy::plan::Want;
use crate::policy::NoRoom;
use crate::profile::{ProfileError, SizeError};
use crate::statedir::StateDir;
use std::time::Duration;

use inflight::release_with;

/// An allocation request, already validated by the caller.
#[derive(Debug, Clone)]
pub(crate) struct AllocRequest {
    pub want: Want,
    /// `--gpu` as given (index or UUID), resolved against the snapshot.
    pub gpu: Option<String>,
    /// `None`: fail at once when there is no room; `Some(None)`: wait forever; `Some(Some(d))`: wait up to d.
    pub wait: Option<Option<Duration>>,
    /// Keep a created instance when the lease ends.
    pub keep: bool,
    pub holder: Holder,
    /// Uid charged with the lease.
    pub uid: u32,
    /// `alloc --name`: unique among active leases, checked under the lock.
    pub name: Option<LeaseName>,
}

impl AllocRequest {
    /// A request for `want` that fails at once without room, held by nobody (`Holder::Manual`), charged to [`caller_uid`].
    pub(crate) fn new(want: Want) -> AllocRequest {
        AllocRequest {
            want,
            gpu: None,
            wait: None,
            keep: false,
            holder: Holder::Manual,
            uid: caller_uid(),
            name: None,
        }
    }
}

/// Tells gc whether a container holder still exists (implemented by the engines).
pub(crate) trait HolderProbe {
    /// `Some(true)` alive, `Some(false)` gone, `None` unknown (engine unreachable: keep the lease).
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool>;

    /// Does `engine` hold a live container labelled with lease `lease` and launch `launch` (a launcher's whose id was
    /// never recorded)? `None` when it cannot be asked (keep the lease).
    fn launched_alive(&self, _lease: LeaseId, _launch: &str, _engine: &str) -> Option<bool> {
        None
    }

    /// Does Slurm still list this job step? `None` when Slurm cannot be asked.
    fn slurm_step_alive(&self, _step: &crate::lease::SlurmStep) -> Option<bool> {
        None
    }
}

/// The uid a lease is charged to: `SUDO_UID` when running as root under sudo, else the effective uid.
pub(crate) fn caller_uid() -> u32 {
    crate::caller::Caller::current().uid
}

/// The invoking user's uid when running as root under sudo (release then only touches their leases);
/// `None` for plain root or an unprivileged user of their own state dir.
pub(crate) fn sudo_uid() -> Option<u32> {
    let c = crate::caller::Caller::current();
    c.via_sudo.then_some(c.uid)
}

/// Errors of allocation and release.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The state dir is for another machine, or another state dir manages these GPUs.
    #[error(transparent)]
    Binding(#[from] binding::BindingError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Size(#[from] SizeError),
    /// A compute-instance profile this GPU model does not offer (or migrun's tables do not know).
    #[error(transparent)]
    CiProfile(Box<crate::gpu::ci_tables::CiResolveError>),
    /// The device offers no compute instance of the asked size in the sharing GPU instance (what the
    /// tables promised); nothing was left behind.
    #[error("{gpu} GI {gi} ({gi_profile}) offers no free {ci} compute instance{why}; see `migrun profiles --ci` and `migrun status`")]
    CiUnavailable {
        gpu: String,
        gi: u32,
        gi_profile: String,
        ci: crate::profile::CiProfileName,
        why: String,
    },
    /// Nothing fits now (exit 3).
    #[error("{0}")]
    NoRoom(Box<NoRoom>),
    /// Nothing could ever fit as asked (MIG off, profile not allowed, too much memory): exit 2.
    #[error("{0}")]
    Unsatisfiable(Box<NoRoom>),
    /// Other requests wait first (first come, first served).
    #[error("{}", match .waited {
        None => format!("{ahead} request(s) are waiting ahead of this one for a MIG instance (first come, first served); queue behind them with --wait, or see `migrun status`"),
        Some(w) => format!("gave up after waiting {w}: {ahead} request(s) are still ahead in the queue (first come, first served); wait longer with --wait=SECONDS, or see `migrun status`"),
    })]
    Queued {
        ahead: usize,
        waited: Option<String>,
    },
    #[error("bad --gpu {given:?}: this machine has {known}; see `migrun status`")]
    BadGpu { given: String, known: String },
    #[error("GPU {gpu} is not one migrun may manage (the config's gpus setting allows {allowed}); pick an allowed GPU with --gpu, or fix `gpus` in the config")]
    NotManaged { gpu: String, allowed: String },
    #[error("invalid config: allowed_profiles entry {entry:?}: {why}; see docs/config.md")]
    BadConfig { entry: String, why: String },
    /// A `warm` entry that is not a profile (issue 23).
    #[error("invalid config: warm entry {entry:?}: {why}; name a profile such as \"1g.10gb\" (see docs/config.md)")]
    BadWarm { entry: String, why: String },
    #[error("this machine has no GPU to allocate from")]
    NoGpus,
    /// The default compute instance could not be created; the GI was rolled back (or journaled for gc).
    #[error(transparent)]
    CreateCi(Box<CiFailure>),
    #[error("lease {lease} belongs to uid {owner}, not to uid {caller}; only its owner (or root without sudo) may release it")]
    NotYours {
        lease: LeaseId,
        owner: u32,
        caller: u32,
    },
    /// A config limit on concurrent leases is reached (exit 2, a policy refusal).
    #[error("refused by policy: {rule} = {limit} in the config, and {held}; release one first (`migrun release ID`, see `migrun status`) or ask the admin to raise {rule}")]
    LimitReached {
        rule: &'static str,
        limit: u32,
        held: String,
    },
    /// The lease was granted but could not be told to the caller (stdout closed or full), so nobody would
    /// ever release it; it was released again (or says how to).
    #[error("lease {lease} ({mig_uuid}) was granted but printing it failed: {err}; {}", match .undo { None => "the lease was released again, nothing is held".to_string(), Some(e) => format!("releasing it again failed too ({e}); release it with `migrun release {lease}`") })]
    Unreported {
        lease: LeaseId,
        mig_uuid: String,
        err: std::io::Error,
        undo: Option<String>,
    },
}

/// A failed compute-instance create, and what became of the GPU instance made just before it.
#[derive(Debug, thiserror::Error)]
#[error("creating the default compute instance in GI {gi} ({profile} at placement {placement}) on {gpu} failed: {cause}; {}", match .rollback { None => "the GPU instance was destroyed again, nothing is left behind".to_string(), Some(e) => format!("destroying the GPU instance again also failed ({e}); it is journaled, and `migrun gc` destroys it") })]
pub struct CiFailure {
    pub gpu: String,
    pub gi: u32,
    pub profile: String,
    pub placement: crate::gpu::Placement,
    /// Why the CI create failed (shown in the message, not chained, so it is printed once).
    pub cause: GpuError,
    pub rollback: Option<GpuError>,
}

/// Exit codes for this module's errors (see `exit`).
pub(crate) fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use crate::exit::{self, ExitCodeOf};
    if e.is::<SizeError>() {
        return Some(exit::USAGE);
    }
    if let Some(b) = e.downcast_ref::<binding::BindingError>() {
        return Some(binding::exit_code(b));
    }
    let e = e.downcast_ref::<AllocError>()?;
    Some(match e {
        AllocError::Gpu(g) => g.exit_code(),
        AllocError::Binding(b) => binding::exit_code(b),
        AllocError::Lease(l) => lease::exit_code_of(l).unwrap_or(exit::FAILED),
        AllocError::Profile(p) => p.exit_code(),
        AllocError::CiProfile(c) => c.exit_code(),
        AllocError::CiUnavailable { .. } => exit::FAILED,
        AllocError::NoRoom(_) | AllocError::Queued { .. } => exit::NO_ROOM,
        AllocError::Size(_)
        | AllocError::Unsatisfiable(_)
        | AllocError::BadGpu { .. }
        | AllocError::NotManaged { .. }
        | AllocError::BadConfig { .. }
        | AllocError::BadWarm { .. }
        | AllocError::LimitReached { .. }
        | AllocError::NoGpus => exit::USAGE,
        AllocError::NotYours { .. } => exit::PRIVILEGE,
        AllocError::CreateCi(_) | AllocError::Unreported { .. } => exit::FAILED,
    })
}

/// Backoff between destroy attempts of a busy instance in `release` (the lock is dropped while sleeping).
const RELEASE_BACKOFF_MS: &[u64] = &[50, 100, 200, 400];

// ---------------------------------------------------------------------------------------------
// The public operations.

/// Allocate: reclaim stale leases, then reuse a free instance or create one, and record the lease.
/// (The session calls [`allocate_swept`]; this is the allocator's own tests' entry.)
#[cfg(test)]
pub(crate) fn allocate(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
) -> Result<Lease, AllocError> {
    allocate_swept(backend, dir, config, req, probe).map(|g| g.lease)
}

/// Find a lease by id (`7`), MIG UUID or name.
fn find_lease(reg: &Registry, target: &str) -> Result<Lease, AllocError> {
    let t = target.trim();
    let found = if let Ok(id) = t.parse::<LeaseId>() {
        reg.lease(id)?
    } else if t.len() > 4 && t.as_bytes()[..4].eq_ignore_ascii_case(b"MIG-") {
        // Compared as bytes: the target is user input, and `MI€-x` has no char boundary at byte 4.
        reg.leases()?
            .into_iter()
            .find(|l| l.mig_uuid.eq_ignore_ascii_case(t))
    } else if LeaseName::check(t).is_ok() {
        // By name: the active lease that has it (names are unique among those); else a draining one,
        // whose release is then finished.
        let mut named: Vec<Lease> = reg
            .leases()?
            .into_iter()
            .filter(|l| l.name.as_ref().is_some_and(|n| n.as_str() == t))
            .collect();
        named.sort_by_key(|l| (l.state != lease::LeaseState::Active, l.id));
        named.into_iter().next()
    } else {
        None
    };
    found.ok_or_else(|| {
        LeaseError::Unknown {
            target: target.to_string(),
        }
        .into()
    })
}

/// Release by lease id, MIG UUID or name. `caller_uid` is the invoking user under sudo (only their own leases), `None` for plain root.
pub(crate) fn release(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    target: &str,
    caller_uid: Option<u32>,
) -> Result<ReleaseOutcome, AllocError> {
    // Check first, so an unknown target or someone else's lease is a clear error and nothing changes.
    let reg = Registry::open(dir)?;
    let wanted = {
        let _lock = reg.lock()?;
        let l = find_lease(&reg, target)?;
        if let Some(caller) = caller_uid {
            if l.uid != caller {
                return Err(AllocError::NotYours {
                    lease: l.id,
                    owner: l.uid,
                    caller,
                });
            }
        }
        l
    };
    let out = release_with(backend, dir, config, false, |reg| Ok(reg.lease(wanted.id)?))?;
    // Released by someone else in between: the instance is taken care of either way.
    Ok(out.unwrap_or(ReleaseOutcome::Gone {
        lease: wanted.id,
        mig_uuid: wanted.mig_uuid,
    }))
}

/// Release the lease held by container `id` (poststop, shim, launcher). Idempotent: no lease -> `NoLease`.
/// `detach`: leave a destroy to a worker the caller starts (`Releasing`), so the container's end does not wait.
pub(crate) fn release_container(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    container_id: &str,
    detach: bool,
) -> Result<ReleaseOutcome, AllocError> {
    let pick = |reg: &Registry| -> Result<Option<Lease>, AllocError> {
        Ok(reg
            .leases()?
            .into_iter()
            .find(|l| matches!(&l.holder, Holder::Container { id, .. } if id == container_id)))
    };
    Ok(release_with(backend, dir, config, detach, pick)?.unwrap_or(ReleaseOutcome::NoLease))
}

/// Release lease `id` only if `holds` says, under the lock, that it is still the caller's (hooks and the
/// shim free only the lease bound to their own container, never one that changed hands in between).
/// `NoLease` when it is gone or `holds` says no.
pub(crate) fn release_if(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    id: LeaseId,
    holds: &dyn Fn(&Lease) -> bool,
    detach: bool,
) -> Result<ReleaseOutcome, AllocError> {
    let pick = |reg: &Registry| -> Result<Option<Lease>, AllocError> {
        Ok(reg.lease(id)?.filter(|l| holds(l)))
    };
    Ok(release_with(backend, dir, config, detach, pick)?.unwrap_or(ReleaseOutcome::NoLease))
}

/// Give lease `id` to `holder` if `holds` says, under the lock, that it may be (a hook's hand-over
/// from precreate's process to the container: a compare-and-set, so it happens once). False when not.
pub(crate) fn set_holder_if(
    dir: &StateDir,
    id: LeaseId,
    holds: &dyn Fn(&Lease) -> bool,
    holder: Holder,
) -> Result<bool, AllocError> {
    let reg = Registry::open(dir)?;
    let _lock = reg.lock()?;
    let Some(mut l) = reg.lease(id)?.filter(|l| holds(l)) else {
        return Ok(false);
    };
    l.holder = holder;
    l.updated_at = lease::now();
    reg.write_lease(&l)?;
    Ok(true)
}

/// Change a lease's holder (the launcher hands its lease from its own pid to the container).
pub(crate) fn set_holder(dir: &StateDir, lease: LeaseId, holder: Holder) -> Result<(), AllocError> {
    let reg = Registry::open(dir)?;
    let _lock = reg.lock()?;
    let mut l = reg.lease(lease)?.ok_or_else(|| LeaseError::Unknown {
        target: lease.to_string(),
    })?;
    l.holder = holder;
    l.updated_at = lease::now();
    reg.write_lease(&l)?;
    Ok(())
}

/// Every lease, for status.
pub fn leases(dir: &StateDir) -> Result<Vec<Lease>, AllocError> {
    Ok(Registry::open(dir)?.leases()?)
}

/// Instances migrun created and has not destroyed (leased or kept warm), for status and teardown.
pub(crate) fn created_instances(dir: &StateDir) -> Result<Vec<CreatedRecord>, AllocError> {
    Ok(Registry::open(dir)?.created()?)
}

/// Tickets of the wait queue that hold their place, in order (for status).
pub(crate) fn waiting(dir: &StateDir) -> Result<Vec<lease::Ticket>, AllocError> {
    let now = lease::now();
    Ok(Registry::open(dir)?
        .tickets()?
        .into_iter()
        .filter(|t| t.holds(now))
        .collect())
}

/// Release leases whose holder is gone, finish draining ones, repair crashed allocations.
pub(crate) fn gc(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    probe: &dyn HolderProbe,
) -> Result<GcReport, AllocError> {
    idle::check(config)?;
    let reg = registry(dir, config, backend)?;
    let mut report = GcReport::default();
    let jobs = {
        let _lock = reg.lock()?;
        let (_, jobs) = sweep(backend, &reg, config, probe, &mut report)?;
        account::gc(&reg, &report);
        for t in reg.tickets()? {
            if !t.alive() {
                reg.remove_ticket(t.ticket)?;
                report.notes.push(format!(
                    "dropped wait ticket {} of pid {} (gone)",
                    t.ticket, t.pid
                ));
            }
        }
        jobs
    };
    // Outside the lock: destroys and creates are never made under it.
    let mut done = GcReport::default();
    let drained = drain::run(backend, &reg, jobs, &mut done);
    account::gc(&reg, &done);
    report.merge(done);
    drained?;
    idle::expire(backend, &reg, config, &mut report)?;
    idle::warm_up(backend, dir, config, probe, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests;
