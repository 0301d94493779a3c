//! Handlers for migrun's background workers (issue 23), and their spawns: the hidden `migrun __finish-release` (the
//! destroy of an instance a container's end left releasing; poststop, the shim and the launcher start it) and
//! `migrun __refill-warm` (the warm pool's refill after an allocation took a warm instance; the allocator starts it
//! through the starter installed here). It must not decide what to destroy or make (the allocator does).

use super::launch::spawn_detached;
use super::Ctx;
use crate::cli::FinishArgs;
use crate::statedir::StateDir;
use anyhow::{Context, Result};
use std::process::Command;

/// `migrun [--simulate S] --state-dir DIR [--config C] <args>`: the same backend, state dir and config as `ctx`.
fn worker(ctx: &Ctx, dir: &std::path::Path, args: &[&str]) -> Result<Command> {
    let exe = std::env::current_exe().context("finding migrun's own binary")?;
    let mut c = Command::new(exe);
    if let Some(s) = &ctx.global.simulate {
        c.arg("--simulate").arg(s);
    }
    c.arg("--state-dir").arg(dir);
    if let Some(cfg) = &ctx.global.config {
        c.arg("--config").arg(cfg);
    }
    c.args(args);
    Ok(c)
}

/// Start `migrun __finish-release --lease ID` detached: the destroy of a lease a container's end left releasing
/// (issue 23). Same backend, state dir and config as this process; it writes to the watcher's log.
pub(crate) fn spawn_finisher(ctx: &Ctx, dir: &StateDir, lease: u64) -> Result<std::process::Child> {
    let mut c = worker(
        ctx,
        dir.path(),
        &["__finish-release", "--lease", &lease.to_string()],
    )?;
    spawn_detached(ctx, &mut c, "migrun __finish-release")
}

/// `migrun __finish-release`: destroy a releasing lease's instance, outside the lock, then drop its records.
pub fn finish_release(ctx: &Ctx, a: &FinishArgs) -> Result<i32> {
    // Out of the engine's session and process group: a hook's or shim's caller ending must not take it along.
    let _ = nix::unistd::setsid();
    let out = ctx
        .session()?
        .finish_release(a.lease)
        .with_context(|| format!("migrun __finish-release: lease {}", a.lease))?;
    tracing::info!(outcome = %out, "background release");
    Ok(0)
}

/// Start `migrun __refill-warm` for `dir` detached (logging to migrun's log), with this process's backend and config
/// flags: an allocation took an instance the `warm` setting keeps. Best effort: `migrun gc` refills the pool too.
pub(crate) fn spawn_refill(ctx: &Ctx, dir: &StateDir) {
    let started = worker(ctx, dir.path(), &["__refill-warm"])
        .and_then(|mut c| spawn_detached(ctx, &mut c, "migrun __refill-warm"));
    if let Err(e) = started {
        tracing::warn!(error = %e, "could not start the warm pool's refill; `migrun gc` refills it");
    }
}

/// `migrun __refill-warm`: make the idle instances the `warm` setting asks for (nothing while a request waits).
pub fn refill_warm(ctx: &Ctx) -> Result<i32> {
    let _ = nix::unistd::setsid();
    let dir = ctx.state_dir()?;
    let probe = crate::engine::probe(dir.path());
    let mut session = ctx.session_in(dir.clone())?;
    let report = session
        .with_backend(|b| crate::alloc::refill::refill_warm(b, &dir, &ctx.config, &probe))
        .context("migrun __refill-warm")?;
    for note in &report.notes {
        tracing::info!("{note}");
    }
    Ok(0)
}
