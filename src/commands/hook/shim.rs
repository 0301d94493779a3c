//! The `migrun runtime` / `migrun-runtime` handler: the shim's create, the pid binding after it and the release after the engine's delete, over the flows in `engine::oci`; no spec logic here.

use super::ops::CtxOps;
use super::{fail_line, flatten, guarded, init_logging, log_outcome, Ctx};
use crate::cli::RuntimeArgs;
use crate::engine::oci::{self, Outcome};
use crate::engine::runtime;
use crate::lease::LeaseId;
use anyhow::Result;

/// The env the shim writes into the hooks it adds: runc runs hooks with nothing else.
fn hook_env(ctx: &Ctx, engine: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            env.push((k.to_string(), v));
        }
    };
    put("MIGRUN_SIMULATE", ctx.global.simulate.clone());
    put(
        "MIGRUN_STATE_DIR",
        ctx.global
            .state_dir
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    put(
        "MIGRUN_CONFIG",
        ctx.global.config.as_ref().map(|p| p.display().to_string()),
    );
    for k in ["MIGRUN_NVML_LIB", "MIGRUN_LOG"] {
        put(k, std::env::var(k).ok());
    }
    debug_assert!(env.iter().all(|(k, _)| oci::PASS_ENV.contains(&k.as_str())));
    env.push((oci::ENV_ENGINE.to_string(), engine.to_string()));
    env
}

/// `migrun runtime ARGS` / `migrun-runtime ARGS`: the runc-compatible shim.
///
/// Returns only on failure, or, for a create it made a lease for, with the runtime's exit code.
pub fn runtime(ctx: &Ctx, a: RuntimeArgs) -> Result<i32> {
    let inv = runtime::parse_invocation(&a.args);
    // Every failure goes to stderr, the engine's runtime log (`--log`) and migrun's log.
    let fail = |e: anyhow::Error| {
        init_logging(ctx);
        runtime::write_runtime_log(&inv, &format!("migrun: {}", flatten(&e)));
        Ok(fail_line(&e))
    };
    if let (true, Some(reason)) = (inv.creates(), inv.unreadable.clone()) {
        let subcommand = inv.subcommand.clone().unwrap_or_default();
        return fail(runtime::ShimError::Unreadable { subcommand, reason }.into());
    }
    let self_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(anyhow::anyhow!("cannot find the migrun binary: {e}")),
    };
    let next =
        match runtime::next_runtime(&ctx.config, std::env::var_os("PATH").as_deref(), &self_exe) {
            Ok(p) => p,
            Err(e) => return fail(e.into()),
        };
    // A bundle that asks for nothing was normally handed over before migrun parsed its command line
    // (`runtime::hand_over_untouched`, for `migrun-runtime`); here `shim_create` reads config.json once
    // and answers `PassThrough` for it.
    if let (true, Some(id)) = (inv.creates(), inv.id.clone()) {
        let bundle = inv.bundle_dir();
        init_logging(ctx);
        let engine = runtime::engine_of(inv.root.as_deref());
        let span = tracing::info_span!("runtime", id = %id, engine);
        let _enter = span.enter();
        // With `--pid-file` (dockerd, containerd and podman always pass one to `create`) the shim binds
        // the lease itself; a `run`, or a create without one, gets the prestart and poststop hooks.
        let root = shim_root(&inv);
        let binds_itself = (inv.subcommand.as_deref() == Some("create") && inv.pid_file.is_some())
            .then(|| root.clone());
        let hooks = oci::ShimHooks {
            bin: self_exe.clone(),
            env: hook_env(ctx, engine),
            timeout_s: Some(ctx.config.hook_timeout_s),
            binds_itself,
        };
        let out = guarded(ctx, "runtime create", || {
            let mut ops = CtxOps::new(ctx);
            Ok(oci::shim_create(
                &bundle,
                &id,
                engine,
                &mut ops,
                &hooks,
                Some(std::process::id()),
            )?)
        });
        let leased = match &out {
            // A lease this create made, or took over from a spawner's hand-over: given back if the
            // runtime's create fails before any hook runs.
            Ok(Outcome::Leased {
                lease,
                reused: false,
                ..
            })
            | Ok(Outcome::Adopted { lease, .. }) => Some((*lease, true)),
            // A retried create's lease is the first create's; the shim still binds it, never frees it.
            Ok(Outcome::Leased {
                lease,
                reused: true,
                ..
            }) => Some((*lease, false)),
            _ => None,
        };
        match out {
            Ok(o) => log_outcome(&o),
            Err(e) => return fail(e),
        }
        if let Some((lease, made)) = leased {
            if made || hooks.binds_itself.is_some() {
                let c = Created {
                    id: &id,
                    bundle: &bundle,
                    engine,
                    lease,
                    made,
                    pid_file: hooks.binds_itself.as_ref().and(inv.pid_file.as_deref()),
                };
                return supervise_create(ctx, &next, &a.args, &c).or_else(&fail);
            }
        }
    }
    if let (Some("delete"), Some(id)) = (inv.subcommand.as_deref(), inv.id.as_deref()) {
        init_logging(ctx);
        let span = tracing::info_span!("runtime", id = %id, engine = runtime::engine_of(inv.root.as_deref()));
        let _enter = span.enter();
        let plan = guarded(ctx, "runtime delete", || {
            let mut ops = CtxOps::new(ctx);
            Ok(oci::shim_delete_plan(&mut ops, id, &shim_root(&inv))?)
        });
        match plan {
            Ok(oci::ShimDelete::Release(rec)) => {
                return supervise_delete(ctx, &next, &a.args, &rec).or_else(&fail)
            }
            Ok(oci::ShimDelete::NotOurs) => {}
            // The delete itself must still happen: the lease is gc's (the container will be gone).
            Err(e) => tracing::error!("{}", flatten(&e)),
        }
    }
    fail(runtime::exec_runtime(&next, &a.args).into())
}

/// The runtime root a call names: `--root`, or runc's default (the shim's record and its delete
/// compare the same value).
fn shim_root(inv: &runtime::Invocation) -> std::path::PathBuf {
    inv.root
        .clone()
        .unwrap_or_else(|| oci::binding::RUNC_DEFAULT_ROOT.into())
}

/// A create the shim leased for.
struct Created<'a> {
    id: &'a str,
    bundle: &'a std::path::Path,
    engine: &'a str,
    lease: LeaseId,
    /// This create made (or took over) the lease, so it gives it back when the runtime fails.
    made: bool,
    /// Where the runtime writes the init pid, when the shim binds the lease itself.
    pid_file: Option<&'a std::path::Path>,
}

/// Run the runtime's create for a container that just got a lease; release the lease when the
/// runtime fails or cannot be started (see [`runtime::supervise_runtime`] for why the shim waits
/// instead of `execv`), or bind it to the container's init pid when it succeeds and the shim binds
/// it itself. Returns the runtime's exit code.
fn supervise_create(
    ctx: &Ctx,
    next: &std::path::Path,
    args: &[std::ffi::OsString],
    c: &Created,
) -> Result<i32> {
    let (id, lease) = (c.id, c.lease);
    // The forwarded signals stay caught (`_caught`) until the lease is given back or bound.
    let (ran, _caught) = match runtime::supervise_runtime(next, args) {
        Ok((code, caught)) => (Ok(code), Some(caught)),
        Err(e) => (Err(e), None),
    };
    let mut ops = CtxOps::new(ctx);
    if matches!(ran, Ok(0)) {
        if let Some(pid_file) = c.pid_file {
            bind_pid(&mut ops, c, pid_file);
        }
        return Ok(0);
    }
    if !c.made {
        return Ok(ran?);
    }
    tracing::info!(
        "{} did not create container {id} ({}); giving lease {lease} back",
        next.display(),
        match &ran {
            Ok(code) => format!("exit {code}"),
            Err(e) => e.to_string(),
        }
    );
    match oci::shim_create_failed(&mut ops, id, c.bundle, lease) {
        Ok(o) => log_outcome(&o),
        // The runtime's failure is what the engine must see; the lease is gc's now.
        Err(e) => tracing::error!("{}", flatten(&e.into())),
    }
    if c.pid_file.is_some() {
        oci::shim_record_gone(&mut ops, id);
    }
    Ok(ran?)
}

/// Hand the lease to the init pid the runtime wrote. A pid file that cannot be read leaves the lease
/// with the shim's pid: gc then keeps it while the recorded runtime root still holds the container.
fn bind_pid(ops: &mut CtxOps, c: &Created, pid_file: &std::path::Path) {
    let pid = match std::fs::read_to_string(pid_file) {
        Ok(text) => text.trim().parse::<u32>().ok().filter(|&p| p > 1),
        Err(e) => {
            tracing::warn!("cannot read the init pid from {}: {e}", pid_file.display());
            None
        }
    };
    let Some(pid) = pid else {
        tracing::warn!(
            lease = c.lease,
            "no init pid for container {}; gc asks the runtime root instead",
            c.id
        );
        return;
    };
    match oci::shim_bind_pid(ops, c.id, c.bundle, c.engine, c.lease, pid) {
        Ok(true) => tracing::info!(
            lease = c.lease,
            "lease {} now held by container {} (init pid {pid})",
            c.lease,
            c.id
        ),
        Ok(false) => tracing::warn!(
            lease = c.lease,
            "lease {} changed hands while container {} was created",
            c.lease,
            c.id
        ),
        Err(e) => tracing::error!("{}", flatten(&e.into())),
    }
}

/// The engine deletes a container whose lease the shim binds: run the runtime's delete, then release
/// the lease once the runtime holds no such container (runc ran poststop hooks at this same point).
/// A delete that fails with the container still there (running, no `--force`) keeps the lease.
fn supervise_delete(
    ctx: &Ctx,
    next: &std::path::Path,
    args: &[std::ffi::OsString],
    rec: &oci::binding::ShimRecord,
) -> Result<i32> {
    let (ran, _caught) = match runtime::supervise_runtime(next, args) {
        Ok((code, caught)) => (Ok(code), Some(caught)),
        Err(e) => (Err(e), None),
    };
    if oci::binding::runtime_has_container(&rec.root, &rec.id) {
        tracing::info!(
            lease = rec.lease,
            "container {} is still in {}; keeping lease {}",
            rec.id,
            rec.root.display(),
            rec.lease
        );
        return Ok(ran?);
    }
    let mut ops = CtxOps::new(ctx);
    match oci::shim_deleted(&mut ops, rec) {
        Ok(o) => log_outcome(&o),
        Err(e) => tracing::error!("{}", flatten(&e.into())),
    }
    Ok(ran?)
}

/// The shim's fast path, before migrun parses its command line: everything but a `create` that asks
/// for a slice and a `delete` of a container the shim binds itself goes straight to the next runtime
/// ([`runtime::hand_over_untouched`]). Returns when migrun has work to do (or any doubt).
///
/// A `delete` costs one `stat` of the state dir's record for its id: the state dir is resolved as the
/// full shim would (`MIGRUN_STATE_DIR`, `MIGRUN_SIMULATE`, the config), from the environment only, as
/// `migrun-runtime` takes no migrun flags.
pub fn shim_fast_path(args: &[std::ffi::OsString]) {
    let inv = runtime::parse_invocation(args);
    if let (Some("delete"), Some(id)) = (inv.subcommand.as_deref(), inv.id.as_deref()) {
        let Some(dir) = env_state_dir() else {
            return;
        };
        match oci::binding::shim_record_rel(id) {
            Some(rel) if std::fs::symlink_metadata(dir.join(&rel)).is_err() => {}
            // A record (or an id that cannot name one: the full shim answers NotOurs for it).
            _ => return,
        }
    }
    runtime::hand_over_untouched_as(&inv, args);
}

/// The state dir `migrun-runtime` uses, from its environment; `None` on any doubt (the full shim
/// then decides).
fn env_state_dir() -> Option<std::path::PathBuf> {
    let var = |k: &str| match std::env::var_os(k) {
        Some(v) if v.is_empty() => Err(()),
        Some(v) => Ok(Some(v)),
        None => Ok(None),
    };
    let global = crate::cli::GlobalArgs {
        simulate: var("MIGRUN_SIMULATE")
            .ok()?
            .map(|v| v.into_string())
            .transpose()
            .ok()?,
        state_dir: var("MIGRUN_STATE_DIR").ok()?.map(Into::into),
        config: var("MIGRUN_CONFIG").ok()?.map(Into::into),
        ..Default::default()
    };
    let ctx = Ctx::new(global).ok()?;
    ctx.state_dir_path().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_passes_migrun_settings_and_the_engine_to_its_hooks() {
        let ctx = Ctx {
            global: crate::cli::GlobalArgs {
                simulate: Some("h100-80gb:2".into()),
                state_dir: Some("/srv/migrun".into()),
                ..Default::default()
            },
            config: crate::config::Config::default(),
        };
        let env = hook_env(&ctx, "docker");
        assert!(env.contains(&("MIGRUN_SIMULATE".into(), "h100-80gb:2".into())));
        assert!(env.contains(&("MIGRUN_STATE_DIR".into(), "/srv/migrun".into())));
        assert_eq!(env.last(), Some(&("MIGRUN_ENGINE".into(), "docker".into())));
        assert!(
            !env.iter().any(|(k, _)| k == "MIGRUN_CONFIG"),
            "only what was set"
        );
    }
}
