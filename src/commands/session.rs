//! The lease session the composition root builds: one state dir, one backend (behind the test fault injector when a debug build asks for it), one holder probe, one CDI spec dir; every command, hook, the shim and the launcher allocate, release and reconcile through it, and so every lease has its CDI spec for exactly as long as it is held. It must not decide policy (that is `alloc` and `policy`).
//!
//! Before it, each handler assembled its own: the fault injector reached only `alloc`/`release`/
//! `gc`, the launcher opened the backend a second time to release, and the hooks built theirs in
//! their lease adapter. Now `Ctx::session` is the one place that decides which backend (simulator
//! or NVML, with profile tables kept in the state dir), which probe (each container's own engine)
//! and which faults; and the one place that writes a lease's spec when it is granted and removes it
//! when the lease ends (docs/cdi.md).

use super::cdi::{self as wire, LeaseSpecError};
use super::Ctx;
use crate::alloc::{self, testhook, AllocError, AllocRequest, GcReport, HolderProbe};
use crate::alloc::{ReleaseOutcome, TeardownOptions, TeardownReport};
use crate::cdi::{cache::SpecCache, store, types::ContainerEdits, StoreError};
use crate::gpu::{Backend, GpuError};
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::statedir::StateDir;
use anyhow::Result;
use std::path::PathBuf;

/// Errors of the session: the allocator's, or a lease's CDI spec.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Spec(#[from] LeaseSpecError),
    /// The lease was granted, its spec could not be written, and the lease was given back.
    #[error("{cause}; lease {lease} was {}", match .undo { None => "released again, nothing is held".to_string(), Some(e) => format!("granted but releasing it again failed ({e}); release it with `migrun release {lease}`") })]
    Undone {
        lease: LeaseId,
        cause: LeaseSpecError,
        undo: Option<String>,
    },
    /// The lease ended, but its spec stayed in the directory.
    #[error("{outcome}, but its CDI spec could not be removed: {cause}; engines can still hand the device out by that spec: fix the directory and run `migrun gc`, which removes it")]
    SpecLeft {
        outcome: ReleaseOutcome,
        cause: StoreError,
    },
}

impl crate::exit::ExitCodeOf for SessionError {
    fn exit_code(&self) -> i32 {
        match self {
            SessionError::Alloc(e) => alloc::exit_code_of(e).unwrap_or(crate::exit::FAILED),
            SessionError::Spec(e) | SessionError::Undone { cause: e, .. } => e.exit_code(),
            SessionError::SpecLeft { .. } => crate::exit::FAILED,
        }
    }
}

/// The spec written for the last lease this session granted.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    /// The NVIDIA toolkit spec whose mounts, hooks and env it copies; `None`: nodes and env only.
    pub toolkit: Option<PathBuf>,
    /// The lease, and what CDI applies for its device: a hook or the shim of this process applies
    /// these without reading the spec back and validating it again.
    lease: LeaseId,
    edits: ContainerEdits,
}

/// An opened state dir with its backend and probe.
pub(crate) struct Session<'c> {
    ctx: &'c Ctx,
    dir: StateDir,
    backend: Box<dyn Backend>,
    faults: Vec<(testhook::Op, crate::gpu::Code)>,
    probe: Box<dyn HolderProbe>,
    cdi_dir: PathBuf,
    written: Option<Written>,
}

impl Ctx {
    /// Open the state dir (creating it when missing) and build the session on it.
    pub(crate) fn session(&self) -> Result<Session<'_>> {
        let dir = self.state_dir()?;
        self.session_in(dir)
    }

    /// [`Ctx::session`] over a state dir the caller has already opened.
    pub(crate) fn session_in(&self, dir: StateDir) -> Result<Session<'_>> {
        let backend = self.backend_in(&dir)?;
        let faults = testhook::faults_from_env().map_err(super::InputError::Other)?;
        let probe = crate::engine::probe(dir.path());
        Ok(Session {
            ctx: self,
            dir,
            backend,
            faults,
            // Each container's own engine answers whether it still exists; an engine it does
            // not know answers "unknown", and only a recorded init pid decides.
            probe: Box::new(probe),
            cdi_dir: self.cdi_dir()?,
            written: None,
        })
    }
}

/// A release that left its destroy to a worker: start it (`migrun __finish-release`), detached, so the container's end
/// does not wait for the driver. If it cannot start, gc (or the next allocation's sweep) destroys the draining
/// instance; the outcome says so either way. It waits for the worker up to `release_wait_ms` (0 by default: not at
/// all; with a driver that destroys at once a wait still reports `Destroyed`); past that it returns, and the worker
/// carries on alone.
fn detach_destroy(ctx: &Ctx, dir: &StateDir, out: ReleaseOutcome) -> ReleaseOutcome {
    let ReleaseOutcome::Releasing { lease, mig_uuid } = &out else {
        return out;
    };
    let mut child = match crate::commands::finisher::spawn_finisher(ctx, dir, *lease) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(lease, error = %e, "could not start the background destroy; gc finishes it");
            return out;
        }
    };
    let until =
        std::time::Instant::now() + std::time::Duration::from_millis(ctx.config.release_wait_ms);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => {
                let gone = alloc::leases(dir).is_ok_and(|ls| ls.iter().all(|l| l.id != *lease));
                if gone {
                    return ReleaseOutcome::Destroyed {
                        lease: *lease,
                        mig_uuid: mig_uuid.clone(),
                    };
                }
                return out;
            }
            Ok(Some(_)) | Err(_) => return out,
            Ok(None) if std::time::Instant::now() >= until => return out,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// Remove the CDI spec of the lease `out` ended, if any.
fn remove_spec(
    cdi_dir: &std::path::Path,
    out: ReleaseOutcome,
) -> Result<ReleaseOutcome, SessionError> {
    let Some(id) = out.lease() else {
        return Ok(out);
    };
    match store::remove(cdi_dir, id) {
        Ok(_) => Ok(out),
        Err(cause) => Err(SessionError::SpecLeft {
            outcome: out,
            cause,
        }),
    }
}

/// A container's end for lease `id`, if `holds` says under the lock that it is still the caller's, decided from
/// migrun's records without the driver (`alloc::end_without_driver`): the lease marked releasing (or kept), its spec
/// removed, the worker started for the destroy. `None` when the records alone cannot decide.
fn end_from_records(
    ctx: &Ctx,
    dir: &StateDir,
    cdi_dir: &std::path::Path,
    id: LeaseId,
    holds: &dyn Fn(&Lease) -> bool,
) -> Result<Option<ReleaseOutcome>, SessionError> {
    let simulated = ctx.global.simulate.is_some();
    match alloc::end_without_driver(dir, &ctx.config, simulated, id, holds)? {
        alloc::Ended::NeedsDriver => Ok(None),
        alloc::Ended::Done(out) => Ok(Some(detach_destroy(ctx, dir, remove_spec(cdi_dir, out)?))),
    }
}

impl Ctx {
    /// A container's end (poststop, the shim after the engine's `delete`) for lease `id` before any session is open:
    /// [`end_from_records`], so the end never opens the driver. `None`: the caller releases through a [`Session`].
    pub(crate) fn end_container(
        &self,
        dir: &StateDir,
        id: LeaseId,
        holds: &dyn Fn(&Lease) -> bool,
    ) -> Result<Option<ReleaseOutcome>> {
        Ok(end_from_records(self, dir, &self.cdi_dir()?, id, holds)?)
    }
}

impl Session<'_> {
    pub(crate) fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// The spec written for the lease [`Session::allocate`] granted last.
    pub(crate) fn written(&self) -> Option<&Written> {
        self.written.as_ref()
    }

    /// Run `f` on the backend, behind the fault injector when a debug build's test hook asks for it.
    pub(crate) fn with_backend<R>(&mut self, f: impl FnOnce(&mut dyn Backend) -> R) -> R {
        self.op(|b, _, _, _| f(b))
    }

    /// Run `f` with everything an allocator operation needs.
    fn op<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Backend, &StateDir, &crate::config::Config, &dyn HolderProbe) -> R,
    ) -> R {
        let (dir, config, probe) = (self.dir.clone(), &self.ctx.config, &*self.probe);
        if self.faults.is_empty() {
            return f(&mut *self.backend, &dir, config, probe);
        }
        let mut faulty = testhook::FaultInjector {
            inner: &mut *self.backend,
            faults: self.faults.clone(),
        };
        f(&mut faulty, &dir, config, probe)
    }

    /// Allocate, and write the lease's CDI spec before anyone learns of the lease: a lease is never
    /// handed out without its device. What can be checked first (the driver's majors and the boot,
    /// the toolkit's spec, a spec dir that exists or can be made) is, so a broken one refuses the
    /// request with nothing allocated; if the spec then cannot be made or written (`mig-minors`
    /// unreadable, a read-only or full file system), the lease is released again (its new instance
    /// destroyed). What stays the same between processes (a slice's numbers, the toolkit's edits)
    /// comes from the state dir's cache when it is there (`cdi::cache`).
    pub(crate) fn allocate(&mut self, req: &AllocRequest) -> Result<Lease, SessionError> {
        let key = self
            .backend
            .host_facts_key()
            .map_err(LeaseSpecError::from)?;
        let mut cache = SpecCache::load(&self.dir, key.as_deref());
        let toolkit = self
            .ctx
            .cdi_toolkit_cached(&mut cache)
            .map_err(LeaseSpecError::from)?;
        store::prepare(&self.cdi_dir).map_err(LeaseSpecError::from)?;
        let alloc::Granted {
            lease,
            swept,
            refill,
        } = match self.op(|b, d, c, p| alloc::allocate_swept(b, d, c, req, p)) {
            Ok(g) => g,
            Err(e) => {
                // A refusal is counted too (allocations by result).
                self.changed();
                return Err(e.into());
            }
        };
        match self.write_spec(&lease, &mut cache, toolkit.as_ref().map(|(_, e)| e)) {
            Ok((path, edits)) => {
                self.written = Some(Written {
                    path,
                    toolkit: toolkit.map(|(p, _)| p),
                    lease: lease.id,
                    edits,
                });
            }
            Err(cause) => {
                let id = lease.id.to_string();
                let undo = self.op(|b, d, c, _| alloc::release(b, d, c, &id, None));
                return Err(SessionError::Undone {
                    lease: lease.id,
                    cause,
                    undo: undo.err().map(|e| e.to_string()),
                });
            }
        }
        cache.save(&self.dir);
        // The allocator released dead holders' leases on the way: their specs go now, not at the
        // next gc, as a spec outliving its lease would hand its instance's device nodes to anyone.
        // Only those: any other stray spec is gc's (no second read of the registry here). Best
        // effort: the lease is good, and gc retries.
        for id in swept {
            let _ = store::remove(&self.cdi_dir, id);
        }
        // The warm pool is one short: a detached worker makes another (issue 23).
        if refill {
            crate::commands::finisher::spawn_refill(self.ctx, &self.dir);
        }
        self.changed();
        Ok(lease)
    }

    /// Builds and writes the spec of `lease`, its numbers from `cache` or else from the host facts
    /// (then kept in `cache`).
    fn write_spec(
        &mut self,
        lease: &Lease,
        cache: &mut SpecCache,
        toolkit: Option<&ContainerEdits>,
    ) -> Result<(PathBuf, ContainerEdits), LeaseSpecError> {
        let nodes = match cache.nodes(&lease.gpu_uuid, lease.gi, lease.ci) {
            Some(n) => n,
            None => {
                let facts = self.backend.host_facts()?;
                let n = wire::nodes_of(lease, &facts)?;
                cache.put_nodes(&lease.gpu_uuid, lease.gi, lease.ci, n);
                n
            }
        };
        wire::write(&self.cdi_dir, lease, &nodes, toolkit)
    }

    /// Something changed: rewrite the metrics textfile, if the config names one.
    fn changed(&mut self) {
        if self.ctx.config.metrics_textfile.is_some() {
            let (ctx, dir) = (self.ctx, self.dir.clone());
            self.with_backend(|b| super::ops::refresh_textfile(ctx, b, &dir));
        }
    }

    /// Remove the spec of the lease `out` ended.
    fn forget(&mut self, out: ReleaseOutcome) -> Result<ReleaseOutcome, SessionError> {
        self.changed();
        remove_spec(&self.cdi_dir, out)
    }

    /// Release by lease id or MIG UUID; `caller_uid` is the sudo user (only their own leases).
    pub(crate) fn release(
        &mut self,
        target: &str,
        caller_uid: Option<u32>,
    ) -> Result<ReleaseOutcome, SessionError> {
        let out = self.op(|b, d, c, _| alloc::release(b, d, c, target, caller_uid))?;
        self.forget(out)
    }

    /// Release lease `id` only if `holds` says so under the lock, waiting for the destroy as `migrun release` does (a
    /// command, not a container's end: the hand-back of a lease no container took).
    pub(crate) fn release_held(
        &mut self,
        id: LeaseId,
        holds: &dyn Fn(&Lease) -> bool,
    ) -> Result<ReleaseOutcome, SessionError> {
        let out = self.op(|b, d, c, _| alloc::release_if(b, d, c, id, holds, false))?;
        self.forget(out)
    }

    /// Release lease `id` only if `holds` says so under the lock (hooks and the shim).
    pub(crate) fn release_if(
        &mut self,
        id: LeaseId,
        holds: &dyn Fn(&Lease) -> bool,
    ) -> Result<ReleaseOutcome, SessionError> {
        // From migrun's records alone when they decide it: no snapshot for a container's end.
        if let Some(out) = end_from_records(self.ctx, &self.dir, &self.cdi_dir, id, holds)? {
            return Ok(out);
        }
        let out = self.op(|b, d, c, _| alloc::release_if(b, d, c, id, holds, true))?;
        let out = self.forget(out)?;
        Ok(detach_destroy(self.ctx, &self.dir, out))
    }

    /// Release lease `id` for a container's end (the launcher): as [`Session::release_if`] for a lease it holds.
    pub(crate) fn release_detached(&mut self, id: LeaseId) -> Result<ReleaseOutcome, SessionError> {
        self.release_if(id, &|_| true)
    }

    /// `migrun __finish-release`: the detached destroy of a lease a container's end left releasing.
    pub(crate) fn finish_release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, SessionError> {
        let out = self.op(|b, d, c, _| alloc::finish_release(b, d, c, id))?;
        self.forget(out)
    }

    /// Release the lease held by docker container `container` (the launcher's watcher).
    pub(crate) fn release_container(
        &mut self,
        container: &str,
    ) -> Result<ReleaseOutcome, SessionError> {
        let out = self.op(|b, d, c, _| alloc::release_container(b, d, c, container, true))?;
        let out = self.forget(out)?;
        Ok(detach_destroy(self.ctx, &self.dir, out))
    }

    /// gc, then the specs whose lease is gone or draining (a killed holder's, say).
    pub(crate) fn gc(&mut self) -> Result<GcReport, SessionError> {
        let mut report = self.op(|b, d, c, p| alloc::gc(b, d, c, p))?;
        // gc is also the way to make migrun read the host facts and the toolkit's spec afresh.
        let _ = SpecCache::forget(&self.dir);
        self.changed();
        for id in self.prune_specs()? {
            report.notes.push(format!(
                "removed the CDI spec of lease {id}, which is no longer held"
            ));
        }
        Ok(report)
    }

    /// Remove every spec in the spec dir whose lease is not an active lease of this registry;
    /// returns their lease ids.
    ///
    /// The specs are listed before the leases are read: a spec is written only after its lease, so
    /// one listed here finds its lease, and a concurrent allocation's fresh spec is never taken
    /// for a stale one.
    pub(crate) fn prune_specs(&self) -> Result<Vec<LeaseId>, SessionError> {
        let specs = store::list(&self.cdi_dir).map_err(LeaseSpecError::from)?;
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let active: Vec<LeaseId> = alloc::leases(&self.dir)?
            .into_iter()
            .filter(|l| l.state == LeaseState::Active)
            .map(|l| l.id)
            .collect();
        let mut removed = Vec::new();
        for (id, _) in specs.into_iter().filter(|(id, _)| !active.contains(id)) {
            if store::remove(&self.cdi_dir, id).map_err(LeaseSpecError::from)? {
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// The CDI edits of `lease` as its spec has them (for the hooks and the shim to apply to a
    /// bundle). A spec that is missing, unreadable as a spec, or not this lease's is written anew.
    pub(crate) fn cdi_edits(&mut self, lease: &Lease) -> Result<ContainerEdits, SessionError> {
        if let Some(w) = self.written.as_ref().filter(|w| w.lease == lease.id) {
            return Ok(w.edits.clone());
        }
        match store::read(&self.cdi_dir, lease.id) {
            Ok(Some(spec)) => {
                if let Some(edits) = wire::edits_if_current(&spec, lease) {
                    return Ok(edits);
                }
            }
            Ok(None) | Err(StoreError::Malformed { .. }) => {}
            Err(e) => return Err(LeaseSpecError::from(e).into()),
        }
        let key = self
            .backend
            .host_facts_key()
            .map_err(LeaseSpecError::from)?;
        let mut cache = SpecCache::load(&self.dir, key.as_deref());
        let toolkit = self
            .ctx
            .cdi_toolkit_cached(&mut cache)
            .map_err(LeaseSpecError::from)?;
        let (_, edits) = self.write_spec(lease, &mut cache, toolkit.as_ref().map(|(_, e)| e))?;
        cache.save(&self.dir);
        Ok(edits)
    }

    /// The GPUs as the backend lists them (for handlers that select GPUs before acting).
    pub(crate) fn gpus(&mut self) -> Result<Vec<crate::gpu::GpuInfo>, GpuError> {
        self.with_backend(|b| b.gpus())
    }

    /// `migrun teardown` through this session; the specs of the leases it ended go with them.
    pub(crate) fn teardown(
        &mut self,
        targets: &[u32],
        options: TeardownOptions,
    ) -> Result<TeardownReport, SessionError> {
        let report = self.op(|b, d, c, p| alloc::teardown(b, d, c, p, targets, options))?;
        self.changed();
        self.prune_specs()?;
        Ok(report)
    }
}
