//! The lease session the composition root builds: one state dir, one backend (behind the test fault injector when a debug build asks for it), one holder probe; every command, hook, the shim and the launcher allocate, release and reconcile through it. It must not decide policy (that is `alloc` and `policy`).
//!
//! Before it, each handler assembled its own: the fault injector reached only `alloc`/`release`/
//! `gc`, the launcher opened the backend a second time to release, and the hooks built theirs in
//! their lease adapter. Now `Ctx::session` is the one place that decides which backend (simulator
//! or NVML, with profile tables kept in the state dir), which probe (each container's own engine)
//! and which faults.

use super::Ctx;
use crate::alloc::{self, testhook, AllocError, AllocRequest, GcReport, HolderProbe};
use crate::gpu::{Backend, GpuError};
use crate::lease::Lease;
use crate::statedir::StateDir;
use anyhow::Result;

/// An opened state dir with its backend and probe.
pub(crate) struct Session<'c> {
    ctx: &'c Ctx,
    dir: StateDir,
    backend: Box<dyn Backend>,
    faults: Vec<(testhook::Op, crate::gpu::Code)>,
    probe: Box<dyn HolderProbe>,
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
        Ok(Session {
            ctx: self,
            dir,
            backend,
            faults,
            // Each container's own engine answers whether it still exists; an engine it does
            // not know answers "unknown", and only a recorded init pid decides.
            probe: Box::new(crate::engine::probe()),
        })
    }
}

impl Session<'_> {
    pub(crate) fn dir(&self) -> &StateDir {
        &self.dir
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

    pub(crate) fn allocate(&mut self, req: &AllocRequest) -> Result<Lease, AllocError> {
        self.op(|b, d, c, p| alloc::allocate(b, d, c, req, p))
    }

    /// Release by lease id or MIG UUID; `caller_uid` is the sudo user (only their own leases).
    pub(crate) fn release(
        &mut self,
        target: &str,
        caller_uid: Option<u32>,
    ) -> Result<alloc::ReleaseOutcome, AllocError> {
        self.op(|b, d, c, _| alloc::release(b, d, c, target, caller_uid))
    }

    pub(crate) fn gc(&mut self) -> Result<GcReport, AllocError> {
        self.op(|b, d, c, p| alloc::gc(b, d, c, p))
    }

    /// The GPUs as the backend lists them (for handlers that select GPUs before acting).
    pub(crate) fn gpus(&mut self) -> Result<Vec<crate::gpu::GpuInfo>, GpuError> {
        self.with_backend(|b| b.gpus())
    }

    /// `migrun teardown` through this session.
    pub(crate) fn teardown(
        &mut self,
        targets: &[u32],
        options: alloc::TeardownOptions,
    ) -> Result<alloc::TeardownReport, AllocError> {
        self.op(|b, d, c, p| alloc::teardown(b, d, c, p, targets, options))
    }
}
