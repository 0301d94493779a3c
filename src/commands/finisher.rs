//! Handler for the hidden `migrun __finish-release` (the background destroy of an instance a container's end left
//! releasing, issue 23) and the spawn of it that poststop, the shim and the launcher use; it must not decide what
//! to destroy (the allocator does, under its lock).

use super::launch::spawn_detached;
use super::Ctx;
use crate::cli::FinishArgs;
use crate::statedir::StateDir;
use anyhow::{Context, Result};
use std::process::Command;

/// Start `migrun __finish-release --lease ID` detached: the destroy of a lease a container's end left releasing
/// (issue 23). Same backend, state dir and config as this process; it writes to the watcher's log.
pub(crate) fn spawn_finisher(ctx: &Ctx, dir: &StateDir, lease: u64) -> Result<std::process::Child> {
    let exe = std::env::current_exe().context("finding migrun's own binary")?;
    let mut c = Command::new(exe);
    if let Some(s) = &ctx.global.simulate {
        c.arg("--simulate").arg(s);
    }
    c.arg("--state-dir").arg(dir.path());
    if let Some(cfg) = &ctx.global.config {
        c.arg("--config").arg(cfg);
    }
    c.args(["__finish-release", "--lease", &lease.to_string()]);
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
