//! Applies placement plans through the hardware trait, rolls back, releases and collects garbage; it must not parse engine formats.
//!
//! Engines tell this module whether a container holder is still alive through [`HolderProbe`], so
//! gc never needs to know docker, podman or containerd.
//!
//! Every change happens under the registry lock (`alloc.lock`), held from the snapshot through the
//! plan, the create and the lease record, so two processes never pick the same instance or placement.
//! Before each allocation (and in `migrun gc`) the registry is reconciled with the device
//! ([`sweep`]): crashed allocations are repaired from their intents, leases of dead holders released,
//! draining instances destroyed, and leases of vanished instances dropped. The on-disk protocol is
//! described in docs/leases.md.

pub mod binding;
mod teardown;
pub mod testhook;
mod wait;

pub use teardown::{teardown, TeardownOptions, TeardownReport, TornItem};
pub use wait::clock;

use crate::config::{Config, GpuRef, ReleasePolicy};
use crate::gpu::{Backend, Code, GpuError, GpuInstance, GpuState, MigState};
use crate::lease::{
    self, CreatedRecord, Holder, Intent, Lease, LeaseError, LeaseId, LeaseState, Registry,
};
use crate::policy::plan::{self, Plan, PlanRequest, Want};
use crate::policy::NoRoom;
use crate::profile::{ProfileError, ProfileSpec, SizeError};
use crate::statedir::StateDir;
use std::time::{Duration, Instant};
use testhook::crash_point;

/// An allocation request, already validated by the caller.
#[derive(Debug, Clone)]
pub struct AllocRequest {
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
}

impl AllocRequest {
    /// A request for `want` that fails at once without room, held by nobody (`Holder::Manual`), charged to [`caller_uid`].
    pub fn new(want: Want) -> AllocRequest {
        AllocRequest {
            want,
            gpu: None,
            wait: None,
            keep: false,
            holder: Holder::Manual,
            uid: caller_uid(),
        }
    }
}

/// Tells gc whether a container holder still exists (implemented by the engines).
pub trait HolderProbe {
    /// `Some(true)` alive, `Some(false)` gone, `None` unknown (engine unreachable: keep the lease).
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool>;

    /// Does `engine` hold a live container labelled with lease `lease` and launch `launch` (a launcher's whose id was
    /// never recorded)? `None` when it cannot be asked (keep the lease).
    fn launched_alive(&self, _lease: LeaseId, _launch: &str, _engine: &str) -> Option<bool> {
        None
    }
}

/// A probe that knows no engine: every container is "unknown", so only its init pid (when recorded) decides.
pub struct NoEngineProbe;

impl HolderProbe for NoEngineProbe {
    fn container_alive(&self, _id: &str, _engine: &str) -> Option<bool> {
        None
    }
}

/// What a finished allocation hands back.
pub type Allocated = Lease;

/// The uid a lease is charged to: `SUDO_UID` when running as root under sudo, else the effective uid.
pub fn caller_uid() -> u32 {
    crate::caller::Caller::current().uid
}

/// The invoking user's uid when running as root under sudo (release then only touches their leases);
/// `None` for plain root or an unprivileged user of their own state dir.
pub fn sudo_uid() -> Option<u32> {
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
    #[error("{0} is not implemented yet")]
    NotYet(&'static str),
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
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
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
        AllocError::NoRoom(_) | AllocError::Queued { .. } => exit::NO_ROOM,
        AllocError::Size(_)
        | AllocError::Unsatisfiable(_)
        | AllocError::BadGpu { .. }
        | AllocError::NotManaged { .. }
        | AllocError::BadConfig { .. }
        | AllocError::LimitReached { .. }
        | AllocError::NoGpus => exit::USAGE,
        AllocError::NotYours { .. } => exit::PRIVILEGE,
        AllocError::CreateCi(_) | AllocError::NotYet(_) | AllocError::Unreported { .. } => {
            exit::FAILED
        }
    })
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    /// The instance migrun created was destroyed (CI, then GI).
    Destroyed { lease: LeaseId, mig_uuid: String },
    /// The lease was dropped; the instance stays (foreign, or kept warm by policy).
    Kept {
        lease: LeaseId,
        mig_uuid: String,
        why: String,
    },
    /// The instance was busy; the lease is draining and gc finishes the job.
    Draining { lease: LeaseId, mig_uuid: String },
    /// Nothing to do (no lease for that container: poststop is idempotent).
    NoLease,
    /// The lease was dropped because its instance no longer exists (destroyed outside migrun).
    Gone { lease: LeaseId, mig_uuid: String },
}

impl std::fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseOutcome::Destroyed { lease, mig_uuid } => {
                write!(f, "lease {lease} released; {mig_uuid} destroyed")
            }
            ReleaseOutcome::Kept {
                lease,
                mig_uuid,
                why,
            } => write!(f, "lease {lease} released; {mig_uuid} kept ({why})"),
            ReleaseOutcome::Draining { lease, mig_uuid } => write!(
                f,
                "lease {lease} released; {mig_uuid} is still in use, so it is draining: `migrun gc` destroys it once its processes end"
            ),
            ReleaseOutcome::NoLease => f.write_str("no lease to release"),
            ReleaseOutcome::Gone { lease, mig_uuid } => write!(
                f,
                "lease {lease} dropped; {mig_uuid} no longer exists (destroyed outside migrun)"
            ),
        }
    }
}

/// What gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub released: Vec<ReleaseOutcome>,
    /// Instances created by a crashed allocation (journaled intent, no lease) that gc destroyed.
    pub repaired: Vec<String>,
    pub notes: Vec<String>,
}

impl GcReport {
    fn is_empty(&self) -> bool {
        self.released.is_empty() && self.repaired.is_empty() && self.notes.is_empty()
    }
}

/// How often an allocation re-plans when the driver refuses a create because the placement was taken meanwhile.
const CREATE_RETRIES: usize = 2;

/// Backoff between destroy attempts of a busy instance in `release` (the lock is dropped while sleeping).
const RELEASE_BACKOFF_MS: &[u64] = &[50, 100, 200, 400];

// ---------------------------------------------------------------------------------------------
// Matching registry records to the device.

fn gpu_by_uuid<'a>(state: &'a MigState, uuid: &str) -> Option<&'a GpuState> {
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
fn lease_whole(state: &MigState, l: &Lease) -> bool {
    lease_instance(state, l)
        .is_some_and(|(_, i)| i.compute_instances.iter().any(|c| c.mig_uuid == l.mig_uuid))
}

fn record_matches(state: &MigState, r: &CreatedRecord) -> bool {
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
fn forget(state: &mut MigState, gpu_uuid: &str, gi: u32) {
    if let Some(g) = state.gpus.iter_mut().find(|g| g.info.uuid == gpu_uuid) {
        g.instances.retain(|i| i.id != gi);
    }
}

/// Does a created/ record (migrun's own create) name exactly the instance this lease names?
fn recorded_as_ours(reg: &Registry, l: &Lease) -> Result<bool, AllocError> {
    Ok(reg.created()?.iter().any(|r| {
        r.gpu_uuid == l.gpu_uuid
            && r.gi == l.gi
            && r.profile_id == l.profile_id
            && r.placement == l.placement
            && r.mig_uuid == l.mig_uuid
    }))
}

/// Why a destroy did not happen.
enum DestroyError {
    /// The instance runs processes (or the driver says IN_USE): never destroy it now.
    Busy,
    Other(GpuError),
}

/// Destroy an instance migrun created: its compute instances first, then the GPU instance.
/// `crash` names the release crash points (only for a release, not for gc repairs).
fn destroy(
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
            None => pid.map_or(true, |(p, st)| lease::process_alive(p, st)),
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
        Holder::Manual => true,
    }
}

fn keeps(l: &Lease, config: &Config) -> bool {
    l.keep || config.release == ReleasePolicy::Keep
}

/// End a lease (under the lock): drop it, or destroy the instance migrun created (one attempt).
fn finish(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    state: &mut MigState,
    mut l: Lease,
) -> Result<ReleaseOutcome, AllocError> {
    let mig_uuid = l.mig_uuid.clone();
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
            return Ok(ReleaseOutcome::Gone {
                lease: l.id,
                mig_uuid,
            });
        }
        let why = if ours {
            "kept warm for reuse (--keep or config release = \"keep\")"
        } else if l.created {
            "the lease says migrun created it, but no created/ record matches the instance, so migrun leaves it alone"
        } else {
            "migrun did not create it"
        };
        return Ok(ReleaseOutcome::Kept {
            lease: l.id,
            mig_uuid,
            why: why.into(),
        });
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
        reg.remove_created(&l.gpu_uuid, l.gi)
            .and_then(|_| reg.remove_lease(l.id))?;
        let outcome = if was_draining {
            // Our own interrupted destroy, or an admin's: either way it is gone now.
            ReleaseOutcome::Destroyed {
                lease: l.id,
                mig_uuid,
            }
        } else {
            ReleaseOutcome::Gone {
                lease: l.id,
                mig_uuid,
            }
        };
        return Ok(outcome);
    };
    let (g, i) = (g.clone(), i.clone());
    match destroy(backend, &g, &i, true) {
        Ok(()) => {
            forget(state, &l.gpu_uuid, l.gi);
            reg.remove_created(&l.gpu_uuid, l.gi)?;
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

/// Reconcile the registry with the device (under the lock) and return the resulting snapshot.
///
/// 1. Intents left by crashed allocations: an instance they created that no lease holds is destroyed.
/// 2. Leases: an active lease whose instance vanished is dropped; one whose holder is dead is
///    released; a draining one gets another destroy attempt.
/// 3. Created-instance records whose instance is gone are dropped.
pub fn sweep(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    probe: &dyn HolderProbe,
    report: &mut GcReport,
) -> Result<MigState, AllocError> {
    Ok(sweep_records(backend, reg, config, probe, report)?.state)
}

/// What a sweep leaves: the device state and the registry's records, as they are after it.
pub struct Swept {
    pub state: MigState,
    pub leases: Vec<Lease>,
    pub created: Vec<CreatedRecord>,
}

/// [`sweep`], also returning the leases and created-instance records it read, so the caller (under the same
/// lock) does not read every lease file again: on a busy host that is one file per running container, and the
/// allocation runs in every container's start.
pub fn sweep_records(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    probe: &dyn HolderProbe,
    report: &mut GcReport,
) -> Result<Swept, AllocError> {
    let mut state = backend.snapshot()?;
    // Before any record is acted on: the records must be about this machine's GPUs.
    binding::bind(reg.dir(), &backend.kind(), &state, config)?;
    let first = reg.leases()?;
    let intents = reg.intents()?;
    // Any repair or release below rewrites lease files; then they are read again.
    let mut changed = !intents.is_empty();

    for intent in intents {
        repair_intent(backend, reg, &mut state, &first, &intent, report)?;
    }

    for l in first.iter() {
        let whole = lease_whole(&state, l);
        let outcome = match l.state {
            LeaseState::Active if !whole => {
                // Never destroy here: a changed instance is not the one we leased.
                reg.remove_lease(l.id)?;
                Some(ReleaseOutcome::Gone {
                    lease: l.id,
                    mig_uuid: l.mig_uuid.clone(),
                })
            }
            LeaseState::Active if holder_alive(l.id, &l.holder, probe) => None,
            LeaseState::Active => {
                report
                    .notes
                    .push(format!("lease {}: holder {} is gone", l.id, l.holder));
                Some(finish(backend, reg, config, &mut state, l.clone())?)
            }
            LeaseState::Draining => Some(finish(backend, reg, config, &mut state, l.clone())?),
        };
        changed |= outcome.is_some();
        match outcome {
            Some(ReleaseOutcome::Draining { lease, mig_uuid }) => {
                report.notes.push(format!(
                    "lease {lease}: {mig_uuid} is still in use; it stays draining"
                ));
            }
            Some(o) => {
                tracing::info!(outcome = %o, "gc");
                report.released.push(o);
            }
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
    })
}

fn repair_intent(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &mut MigState,
    leases: &[Lease],
    intent: &Intent,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    let leased =
        |gpu_uuid: &str, gi: u32| leases.iter().any(|l| l.gpu_uuid == gpu_uuid && l.gi == gi);
    let Some(gi) = intent.gi else {
        return drop_unbound_intent(reg, state, intent, &leased, report);
    };
    // The intent licenses destroying only the instance its create returned: that GI id, with the profile
    // and placement it was asked for.
    let found = gpu_by_uuid(state, &intent.gpu_uuid).and_then(|g| {
        let i = g.instances.iter().find(|i| {
            i.id == gi && i.profile_id == intent.profile_id && i.placement == intent.placement
        })?;
        Some((g.clone(), i.clone()))
    });
    let Some((g, i)) = found else {
        // The instance is gone already (or was replaced: then it is not the one the intent made).
        if !leased(&intent.gpu_uuid, gi) {
            reg.remove_created(&intent.gpu_uuid, gi)?;
        }
        reg.remove_intent(intent.lease)?;
        report.notes.push(format!(
            "dropped the journal of an interrupted allocation (lease {}, {} at {} on GPU {}): no instance of it exists",
            intent.lease, intent.profile, intent.placement, intent.gpu_index
        ));
        return Ok(());
    };
    if leased(&g.info.uuid, i.id) {
        // The allocation did finish: its lease stands for the instance.
        reg.remove_intent(intent.lease)?;
        return Ok(());
    }
    let what = format!(
        "GPU {} GI {} ({} at {}), left by an interrupted allocation (lease {})",
        g.info.index, i.id, intent.profile, i.placement, intent.lease
    );
    match destroy(backend, &g, &i, false) {
        Ok(()) => {
            forget(state, &g.info.uuid, i.id);
            reg.remove_created(&g.info.uuid, i.id)?;
            reg.remove_intent(intent.lease)?;
            report.repaired.push(format!("{what}: destroyed"));
        }
        Err(DestroyError::Busy) => {
            report.notes.push(format!(
                "{what} is in use; gc will destroy it once it is idle"
            ));
        }
        Err(DestroyError::Other(e)) => return Err(e.into()),
    }
    Ok(())
}

/// An intent without a journaled GI id: the allocation died before the driver's create returned, or in
/// the instant between that and the journal write. An instance of its profile at its placement may be
/// the one it made, or one someone made there since (an admin's `nvidia-smi mig -cgi`); nothing on the
/// device tells them apart, so the intent licenses no destroy. It is dropped, and a candidate instance
/// is left alone and reported, for a person to judge.
fn drop_unbound_intent(
    reg: &Registry,
    state: &MigState,
    intent: &Intent,
    leased: &dyn Fn(&str, u32) -> bool,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    let created = reg.created()?;
    let candidate = gpu_by_uuid(state, &intent.gpu_uuid).and_then(|g| {
        g.instances
            .iter()
            .find(|i| {
                i.profile_id == intent.profile_id
                    && i.placement == intent.placement
                    && !leased(&g.info.uuid, i.id)
                    && !created
                        .iter()
                        .any(|r| r.gpu_uuid == g.info.uuid && r.gi == i.id)
            })
            .map(|i| (g.info.index, i.id))
    });
    reg.remove_intent(intent.lease)?;
    let head = format!(
        "dropped the journal of an interrupted allocation (lease {}, {} at {} on GPU {})",
        intent.lease, intent.profile, intent.placement, intent.gpu_index
    );
    report.notes.push(match candidate {
        None => format!("{head}: no instance of it exists"),
        Some((gpu, gi)) => format!(
            "{head}: GI {gi} there may be what it left or someone else's, and migrun cannot tell, so it leaves it alone \
             (if nobody uses it, remove it with `migrun teardown --gpu {gpu} --include-foreign` or nvidia-smi)"
        ),
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Building the plan request.

fn known_gpus(state: &MigState) -> String {
    if state.gpus.is_empty() {
        return "no GPUs".into();
    }
    state
        .gpus
        .iter()
        .map(|g| format!("{} ({})", g.info.index, g.info.uuid))
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolve_gpu(state: &MigState, given: &str) -> Result<u32, AllocError> {
    let t = given.trim();
    let found = state.gpus.iter().find(|g| {
        g.info.uuid.eq_ignore_ascii_case(t) || t.parse::<u32>().is_ok_and(|n| n == g.info.index)
    });
    found
        .map(|g| g.info.index)
        .ok_or_else(|| AllocError::BadGpu {
            given: given.into(),
            known: format!("GPUs {}", known_gpus(state)),
        })
}

/// The planner's input from a request, the config and the registry.
pub fn plan_request(
    state: &MigState,
    config: &Config,
    req: &AllocRequest,
    created: &[CreatedRecord],
    leases: &[Lease],
) -> Result<PlanRequest, AllocError> {
    let managed: Option<Vec<u32>> = config.gpus.as_ref().map(|refs| {
        refs.iter()
            .filter_map(|r| match r {
                GpuRef::Index(i) => state.gpu(*i).map(|g| g.info.index),
                GpuRef::Uuid(u) => state
                    .gpus
                    .iter()
                    .find(|g| g.info.uuid.eq_ignore_ascii_case(u))
                    .map(|g| g.info.index),
            })
            .collect()
    });
    if managed.as_ref().is_some_and(|m| m.is_empty()) {
        return Err(AllocError::NotManaged {
            gpu: "any".into(),
            allowed: "no GPU present on this machine".into(),
        });
    }
    let gpus = match (&req.gpu, managed) {
        (None, m) => m,
        (Some(given), m) => {
            let i = resolve_gpu(state, given)?;
            if let Some(m) = &m {
                if !m.contains(&i) {
                    return Err(AllocError::NotManaged {
                        gpu: given.clone(),
                        allowed: if m.is_empty() {
                            "none present".into()
                        } else {
                            m.iter()
                                .map(|i| i.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    });
                }
            }
            Some(vec![i])
        }
    };
    let allowed = match &config.allowed_profiles {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|s| {
                    s.parse::<ProfileSpec>().map_err(|e| AllocError::BadConfig {
                        entry: s.clone(),
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let kept = created
        .iter()
        .filter(|r| {
            !leases
                .iter()
                .any(|l| l.gpu_uuid == r.gpu_uuid && l.gi == r.gi)
        })
        .map(|r| (r.gpu_uuid.clone(), r.gi))
        .collect();
    Ok(PlanRequest {
        want: req.want.clone(),
        gpus,
        allowed,
        kept,
    })
}

/// Turn a hopeless no-room into the clearest error: an unknown profile or disabled MIG by name.
fn unsatisfiable(state: &MigState, req: &PlanRequest, nr: NoRoom) -> AllocError {
    use crate::policy::Why;
    if nr.gpus.is_empty() {
        return AllocError::NoGpus;
    }
    if nr.gpus.iter().all(|g| g.why == Why::NoSuchProfile) {
        if let (Want::Profile(spec), Some(g)) = (&req.want, state.gpu(nr.gpus[0].index)) {
            if let Err(e) =
                crate::gpu::names::resolve(spec, &g.profiles, &g.info.label(), &g.info.name)
            {
                return e.into();
            }
        }
    }
    if nr.gpus.iter().all(|g| g.why == Why::MigDisabled) {
        let g = &nr.gpus[0];
        return GpuError::MigDisabled {
            gpu: format!("GPU {} ({})", g.index, g.uuid),
            index: g.index,
        }
        .into();
    }
    AllocError::Unsatisfiable(Box::new(nr))
}

// ---------------------------------------------------------------------------------------------
// Applying a plan.

/// Execute a plan (under the lock): reuse records a lease; create journals an intent, creates the GI
/// and its default CI (destroying the GI again if the CI fails), records the instance and the lease.
pub fn apply(
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
        created: false,
        keep: req.keep,
        state: LeaseState::Active,
        created_at: now,
        updated_at: now,
    };
    match plan {
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
            crash_point("after-write-lease");
            reg.complete_intent(id)?;
            Ok(lease)
        }
    }
}

/// Destroy idle instances migrun kept warm, to make room. Each is journaled as an intent first (with
/// its GI id and no lease), so a crash half-way leaves something gc finishes destroying.
fn evict(
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
        let intent = Intent {
            lease: reg.next_lease_id()?,
            gpu_index: gpu,
            gpu_uuid: g.info.uuid.clone(),
            profile_id: r.profile_id,
            profile: r.profile.clone(),
            placement: r.placement,
            gi: Some(gi),
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

// ---------------------------------------------------------------------------------------------
// The public operations.

/// Allocate: reclaim stale leases, then reuse a free instance or create one, and record the lease.
pub fn allocate(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    req: &AllocRequest,
    probe: &dyn HolderProbe,
) -> Result<Lease, AllocError> {
    let reg = Registry::open(dir)?;
    let started = Instant::now();
    let mut queue = wait::Queue::new(&reg, req);
    loop {
        // A waiter looks again after a release or every second; a newcomer looks at once.
        let mut ahead = queue.ahead()?;
        if queue.due() || !queue.has_ticket() {
            let _lock = reg.lock()?;
            let (held, n_ahead) = queue.held_ahead_locked()?;
            ahead = n_ahead;
            queue.planning();
            let mut report = GcReport::default();
            let Swept {
                mut state,
                leases,
                created,
            } = sweep_records(backend, &reg, config, probe, &mut report)?;
            if !report.is_empty() {
                tracing::info!(?report, "reconciled before allocating");
            }
            if state.gpus.is_empty() {
                return Err(AllocError::NoGpus);
            }
            // Checked under the lock, after the sweep freed dead holders' leases, so two
            // concurrent requests cannot both take the last allowed lease.
            check_limits(config, &leases, req.uid)?;
            let full = plan_request(&state, config, req, &created, &leases)?;
            // What could never fit is said at once, whoever waits; what fits now, but only on
            // GPUs that earlier waiters hold back, waits behind them.
            let fits_ignoring_queue = match plan::plan(&state, &leases, &full) {
                Err(nr) if !nr.can_wait() => return Err(unsatisfiable(&state, &full, nr)),
                r => r.is_ok(),
            };
            let mut preq = full.clone();
            if !held.is_empty() {
                let mine: Vec<u32> = state
                    .gpus
                    .iter()
                    .map(|g| g.info.index)
                    .filter(|i| full.gpus.as_ref().map_or(true, |a| a.contains(i)))
                    .filter(|i| !held.contains(i))
                    .collect();
                preq.gpus = Some(mine);
            }
            let mut planned = plan::plan(&state, &leases, &preq);
            if matches!(&planned, Err(nr) if nr.can_wait()) {
                if let Some(victims) = plan::evictions(&state, &leases, &preq) {
                    evict(backend, &reg, &state, &victims)?;
                    state = backend.snapshot()?;
                    planned = plan::plan(&state, &leases, &preq);
                }
            }
            // Someone outside migrun (an admin's nvidia-smi) may take the chosen placement between
            // our snapshot and the create; the driver then says INSUFFICIENT_RESOURCES. Look again.
            for retry in 0..=CREATE_RETRIES {
                let Ok(p) = &planned else { break };
                match apply(backend, &reg, &state, p, req) {
                    Ok(lease) => {
                        queue.done();
                        return Ok(lease);
                    }
                    Err(AllocError::Gpu(e))
                        if retry < CREATE_RETRIES
                            && e.code() == Some(Code::InsufficientResources) =>
                    {
                        tracing::info!(error = %e, "placement taken under us; planning again");
                        state = backend.snapshot()?;
                        planned = plan::plan(&state, &leases, &preq);
                    }
                    Err(e) => return Err(e),
                }
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

/// The config's `max_leases_per_user` and `max_leases_total`, against the leases that exist now.
pub fn check_limits(config: &Config, leases: &[Lease], uid: u32) -> Result<(), AllocError> {
    let ids = |ls: Vec<&Lease>| {
        ls.iter()
            .map(|l| l.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(limit) = config.max_leases_total {
        if leases.len() as u64 >= u64::from(limit) {
            return Err(AllocError::LimitReached {
                rule: "max_leases_total",
                limit,
                held: format!(
                    "{} lease(s) exist (leases {})",
                    leases.len(),
                    ids(leases.iter().collect())
                ),
            });
        }
    }
    if let Some(limit) = config.max_leases_per_user {
        let mine: Vec<&Lease> = leases.iter().filter(|l| l.uid == uid).collect();
        if mine.len() as u64 >= u64::from(limit) {
            return Err(AllocError::LimitReached {
                rule: "max_leases_per_user",
                limit,
                held: format!(
                    "uid {uid} holds {} lease(s) (leases {})",
                    mine.len(),
                    ids(mine)
                ),
            });
        }
    }
    Ok(())
}

/// Find a lease by id (`7`) or MIG UUID.
fn find_lease(reg: &Registry, target: &str) -> Result<Lease, AllocError> {
    let t = target.trim();
    let found = if let Ok(id) = t.parse::<LeaseId>() {
        reg.lease(id)?
    } else if t.len() > 4 && t.as_bytes()[..4].eq_ignore_ascii_case(b"MIG-") {
        // Compared as bytes: the target is user input, and `MI€-x` has no char boundary at byte 4.
        reg.leases()?
            .into_iter()
            .find(|l| l.mig_uuid.eq_ignore_ascii_case(t))
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

/// End a lease found by `pick` (under the lock), retrying a busy destroy with backoff (the lock is
/// dropped while sleeping). `None` when `pick` finds no lease at the first attempt.
fn release_with<F>(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    mut pick: F,
) -> Result<Option<ReleaseOutcome>, AllocError>
where
    F: FnMut(&Registry) -> Result<Option<Lease>, AllocError>,
{
    let reg = Registry::open(dir)?;
    let mut last: Option<Lease> = None;
    for attempt in 0..=RELEASE_BACKOFF_MS.len() {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(RELEASE_BACKOFF_MS[attempt - 1]));
        }
        let _lock = reg.lock()?;
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
        let outcome = finish(backend, &reg, config, &mut state, l)?;
        if !matches!(outcome, ReleaseOutcome::Draining { .. })
            || attempt == RELEASE_BACKOFF_MS.len()
        {
            return Ok(Some(outcome));
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Release by lease id or MIG UUID. `caller_uid` is the invoking user under sudo (only their own leases), `None` for plain root.
pub fn release(
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
    let out = release_with(backend, dir, config, |reg| Ok(reg.lease(wanted.id)?))?;
    // Released by someone else in between: the instance is taken care of either way.
    Ok(out.unwrap_or(ReleaseOutcome::Gone {
        lease: wanted.id,
        mig_uuid: wanted.mig_uuid,
    }))
}

/// Release the lease held by container `id` (poststop, shim, launcher). Idempotent: no lease -> `NoLease`.
pub fn release_container(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    container_id: &str,
) -> Result<ReleaseOutcome, AllocError> {
    let pick = |reg: &Registry| -> Result<Option<Lease>, AllocError> {
        Ok(reg
            .leases()?
            .into_iter()
            .find(|l| matches!(&l.holder, Holder::Container { id, .. } if id == container_id)))
    };
    Ok(release_with(backend, dir, config, pick)?.unwrap_or(ReleaseOutcome::NoLease))
}

/// Release lease `id` only if `holds` says, under the lock, that it is still the caller's (hooks and the
/// shim free only the lease bound to their own container, never one that changed hands in between).
/// `NoLease` when it is gone or `holds` says no.
pub fn release_if(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    id: LeaseId,
    holds: &dyn Fn(&Lease) -> bool,
) -> Result<ReleaseOutcome, AllocError> {
    let pick = |reg: &Registry| -> Result<Option<Lease>, AllocError> {
        Ok(reg.lease(id)?.filter(|l| holds(l)))
    };
    Ok(release_with(backend, dir, config, pick)?.unwrap_or(ReleaseOutcome::NoLease))
}

/// Give lease `id` to `holder` if `holds` says, under the lock, that it may be (a hook's hand-over
/// from precreate's process to the container: a compare-and-set, so it happens once). False when not.
pub fn set_holder_if(
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

/// The lease held by container `id`, if any (for hooks that must not allocate twice).
pub fn lease_of_container(dir: &StateDir, container_id: &str) -> Result<Option<Lease>, AllocError> {
    let reg = Registry::open(dir)?;
    Ok(reg
        .leases()?
        .into_iter()
        .find(|l| matches!(&l.holder, Holder::Container { id, .. } if id == container_id)))
}

/// Change a lease's holder (the launcher hands its lease from its own pid to the container).
pub fn set_holder(dir: &StateDir, lease: LeaseId, holder: Holder) -> Result<(), AllocError> {
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
pub fn created_instances(dir: &StateDir) -> Result<Vec<CreatedRecord>, AllocError> {
    Ok(Registry::open(dir)?.created()?)
}

/// Tickets of the wait queue that hold their place, in order (for status).
pub fn waiting(dir: &StateDir) -> Result<Vec<lease::Ticket>, AllocError> {
    let now = lease::now();
    Ok(Registry::open(dir)?
        .tickets()?
        .into_iter()
        .filter(|t| t.holds(now))
        .collect())
}

/// Release leases whose holder is gone, finish draining ones, repair crashed allocations.
pub fn gc(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    probe: &dyn HolderProbe,
) -> Result<GcReport, AllocError> {
    let reg = Registry::open(dir)?;
    let _lock = reg.lock()?;
    let mut report = GcReport::default();
    sweep(backend, &reg, config, probe, &mut report)?;
    for t in reg.tickets()? {
        if !t.alive() {
            reg.remove_ticket(t.ticket)?;
            report.notes.push(format!(
                "dropped wait ticket {} of pid {} (gone)",
                t.ticket, t.pid
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
