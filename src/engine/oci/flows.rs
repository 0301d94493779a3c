//! The hook flows (precreate, prestart, poststop) and the shim's create, over [`LeaseOps`].

use super::*;
use crate::alloc::ReleaseOutcome;
use crate::lease::{Holder, Lease};
use serde_json::Value;
use std::fmt;

/// The lease operations a hook needs; the real one opens the state dir and the GPU backend lazily.
pub trait LeaseOps {
    /// Allocate a slice for `req`, held by `holder`.
    fn allocate(&mut self, req: &Request, holder: Holder) -> Result<Lease, OpsError>;
    /// One lease by id.
    fn lease(&mut self, id: LeaseId) -> Result<Option<Lease>, OpsError>;
    /// The lease a container already holds (a retried `create`).
    fn lease_of_container(&mut self, id: &str) -> Result<Option<Lease>, OpsError>;
    fn set_holder(&mut self, id: LeaseId, holder: Holder) -> Result<(), OpsError>;
    /// Release by lease id.
    fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError>;
    /// Release what container `id` holds (idempotent).
    fn release_container(&mut self, id: &str) -> Result<ReleaseOutcome, OpsError>;
}

/// What a hook did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The container asked for nothing and carried nothing to strip: nothing was touched.
    PassThrough,
    /// The container asked for nothing; NVIDIA device variables or forged markers were neutralised.
    Guarded,
    /// A lease was made (or found, for a retried create) and written into the config.
    Leased {
        lease: LeaseId,
        mig_uuid: String,
        reused: bool,
    },
    /// A lease made earlier (precreate or shim) was handed to the container now that its pid is known.
    Adopted {
        lease: LeaseId,
        mig_uuid: String,
    },
    Released(ReleaseOutcome),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::PassThrough => write!(f, "no slice requested; config untouched"),
            Outcome::Guarded => write!(
                f,
                "no slice requested; NVIDIA device variables set to {NVIDIA_NO_DEVICES} and foreign migrun markers removed"
            ),
            Outcome::Leased {
                lease,
                mig_uuid,
                reused,
            } => write!(
                f,
                "{} lease {lease}: NVIDIA_VISIBLE_DEVICES={mig_uuid}",
                if *reused { "reused" } else { "allocated" }
            ),
            Outcome::Adopted { lease, mig_uuid } => {
                write!(f, "lease {lease} ({mig_uuid}) now held by the container")
            }
            Outcome::Released(r) => write!(f, "{r}"),
        }
    }
}

fn lease_err(context: impl Into<String>) -> impl FnOnce(OpsError) -> OciError {
    let context = context.into();
    move |source| OciError::Lease { context, source }
}

/// Release a lease we just made because a later step failed; the original error wins.
fn undo(ops: &mut dyn LeaseOps, lease: &Lease, err: OciError) -> OciError {
    if let Err(e) = ops.release(lease.id) {
        tracing::error!(
            lease = lease.id,
            "could not release lease after a failure: {e}"
        );
    } else {
        tracing::info!(
            lease = lease.id,
            "released lease {} after a failure",
            lease.id
        );
    }
    err
}

/// podman's precreate stage: config JSON in, modified config out.
///
/// The lease is held by `holder` (the engine process) until prestart hands it to the container;
/// poststop finds it through the `migrun.lease` marker in the bundle's config.json, because podman's
/// poststop state does not carry annotations added here.
pub fn precreate(
    input: &[u8],
    ops: &mut dyn LeaseOps,
    holder: Holder,
    emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Outcome, OciError> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(OciError::EmptyInput {
            what: "container config JSON",
            stage: "precreate",
        });
    }
    let path = Path::new("<stdin>");
    let spec = parse_config(input, path)?;
    let req = request_of(&spec)?;
    let Some(req) = req else {
        if !needs_guard(&spec) {
            emit(input).map_err(OciError::Emit)?;
            return Ok(Outcome::PassThrough);
        }
        let mut spec = spec;
        apply_all(&mut spec, &guard_modifiers()).map_err(|reason| OciError::BadConfig {
            path: path.into(),
            reason,
        })?;
        emit(&serde_json::to_vec(&spec).expect("serializes")).map_err(OciError::Emit)?;
        return Ok(Outcome::Guarded);
    };
    let lease = ops.allocate(&req, holder).map_err(lease_err(format!(
        "cannot allocate {} ({})",
        req.profile, req.source
    )))?;
    let mut spec = spec;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    if let Err(reason) = apply_all(&mut spec, &mods) {
        return Err(undo(
            ops,
            &lease,
            OciError::BadConfig {
                path: path.into(),
                reason,
            },
        ));
    }
    if let Err(e) = emit(&serde_json::to_vec(&spec).expect("serializes")) {
        return Err(undo(ops, &lease, OciError::Emit(e)));
    }
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused: false,
    })
}

fn container_holder(state: &HookState, engine: &str) -> Holder {
    Holder::Container {
        id: state.id.clone(),
        engine: engine.to_string(),
        pid: state
            .pid
            .and_then(|p| crate::lease::process_start_time(p).map(|t| (p, t))),
    }
}

/// May this container take over lease `l` named by a marker in its config?
///
/// Markers are written by migrun (precreate and the shim strip any the container brought), but a
/// plain-runc or CRI-O config could still carry a forged one, so the lease must be this container's
/// already, or be podman's precreate lease still held by the podman process.
fn marker_fits(l: &Lease, container: &str, engine: &str) -> Result<(), String> {
    match &l.holder {
        Holder::Container { id, .. } if id == container => Ok(()),
        Holder::Container { id, .. } => Err(format!("is held by container {id}")),
        Holder::Process { .. } if engine == "podman" => Ok(()),
        Holder::Process { pid, .. } => Err(format!(
            "is held by process {pid}, and only podman's precreate hands a lease over this way"
        )),
        Holder::Manual => Err("is a manual lease (migrun alloc)".into()),
    }
}

/// OCI prestart / createRuntime: allocate (or adopt the lease precreate or the shim made) and rewrite
/// `<bundle>/config.json`, so that a later prestart hook (nvidia-container-runtime-hook) mounts that MIG device.
pub fn prestart(
    state_json: &[u8],
    ops: &mut dyn LeaseOps,
    engine: Option<&str>,
) -> Result<Outcome, OciError> {
    let state = parse_state(state_json, "prestart")?;
    let cfg = BundleConfig::load(&state.bundle)?;
    // runc copies the config's annotations into the state; look at both in case a runtime does not.
    let engine = engine.unwrap_or_else(|| {
        let mut a = state.annotations.clone();
        if let Some(m) = cfg.spec.get("annotations").and_then(Value::as_object) {
            for (k, v) in m {
                a.entry(k.clone())
                    .or_insert_with(|| v.as_str().unwrap_or("").to_string());
            }
        }
        engine_from_annotations(&a)
    });
    let req = request_of(&cfg.spec)?;
    let marker = lease_marker(&cfg.spec)?;

    if let (Some(id), Some(_)) = (marker, &req) {
        // Made by precreate or the shim: check it, then hand it to the container (now we know its pid).
        let stale = |reason: String| OciError::StaleMarker {
            path: cfg.path.clone(),
            lease: id,
            reason,
        };
        let l = ops
            .lease(id)
            .map_err(lease_err(format!("cannot read lease {id}")))?
            .ok_or_else(|| stale("does not exist (released or collected)".into()))?;
        marker_fits(&l, &state.id, engine).map_err(stale)?;
        if env_lookup(&cfg.spec, NVIDIA_VISIBLE_DEVICES) != [l.mig_uuid.as_str()] {
            return Err(stale(format!(
                "is {} but NVIDIA_VISIBLE_DEVICES does not name it",
                l.mig_uuid
            )));
        }
        let holder = container_holder(&state, engine);
        if l.holder != holder {
            ops.set_holder(id, holder).map_err(lease_err(format!(
                "cannot hand lease {id} to container {}",
                state.id
            )))?;
        }
        return Ok(Outcome::Adopted {
            lease: id,
            mig_uuid: l.mig_uuid,
        });
    }

    let Some(req) = req else {
        return guard_bundle(&cfg);
    };
    let (lease, reused) = obtain(ops, &req, &state.id, container_holder(&state, engine))?;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    write_or_undo(ops, &cfg, &mods, &lease, reused)?;
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

/// The lease this container already holds (a retried create), or a new one.
fn obtain(
    ops: &mut dyn LeaseOps,
    req: &Request,
    container: &str,
    holder: Holder,
) -> Result<(Lease, bool), OciError> {
    let existing = ops
        .lease_of_container(container)
        .map_err(lease_err(format!(
            "cannot read the leases of container {container}"
        )))?;
    if let Some(l) = existing {
        return Ok((l, true));
    }
    let l = ops.allocate(req, holder).map_err(lease_err(format!(
        "cannot allocate {} for container {container} ({})",
        req.profile, req.source
    )))?;
    Ok((l, false))
}

fn write_or_undo(
    ops: &mut dyn LeaseOps,
    cfg: &BundleConfig,
    mods: &[Box<dyn SpecModifier>],
    lease: &Lease,
    reused: bool,
) -> Result<(), OciError> {
    let res = cfg
        .modified(mods)
        .and_then(|m| m.map_or(Ok(()), |spec| cfg.write(&spec)));
    match res {
        Ok(()) => Ok(()),
        Err(e) if reused => Err(e),
        Err(e) => Err(undo(ops, lease, e)),
    }
}

fn guard_bundle(cfg: &BundleConfig) -> Result<Outcome, OciError> {
    if !needs_guard(&cfg.spec) {
        return Ok(Outcome::PassThrough);
    }
    match cfg.modified(&guard_modifiers())? {
        Some(spec) => {
            cfg.write(&spec)?;
            Ok(Outcome::Guarded)
        }
        None => Ok(Outcome::PassThrough),
    }
}

/// OCI poststop: release this container's lease. Idempotent; a container that never had one is fine.
///
/// It looks at `<bundle>/config.json` first, so a container that asked for nothing costs no state-dir access.
pub fn poststop(state_json: &[u8], ops: &mut dyn LeaseOps) -> Result<Outcome, OciError> {
    let state = parse_state(state_json, "poststop")?;
    // The bundle may already be gone (an engine that cleans up early): then ask by container id.
    let cfg = match BundleConfig::load(&state.bundle) {
        Ok(c) => Some(c),
        Err(OciError::MissingBundle { .. }) => None,
        Err(OciError::ReadConfig { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    let (marker, asked) = match &cfg {
        Some(c) => (
            lease_marker(&c.spec).ok().flatten(),
            // A malformed request still may have left a lease behind (timeout): look it up by id.
            !matches!(request_of(&c.spec), Ok(None)),
        ),
        None => (None, true),
    };
    if marker.is_none() && !asked {
        return Ok(Outcome::PassThrough);
    }
    let out = ops.release_container(&state.id).map_err(lease_err(format!(
        "cannot release the lease of container {}",
        state.id
    )))?;
    if out != ReleaseOutcome::NoLease {
        return Ok(Outcome::Released(out));
    }
    // Allocated by precreate and never handed over (the container failed before prestart).
    if let Some(id) = marker {
        if let Some(l) = ops
            .lease(id)
            .map_err(lease_err(format!("cannot read lease {id}")))?
        {
            match &l.holder {
                Holder::Process { .. } => {
                    let out = ops
                        .release(id)
                        .map_err(lease_err(format!("cannot release lease {id}")))?;
                    return Ok(Outcome::Released(out));
                }
                other => tracing::warn!(
                    lease = id,
                    "config.json names lease {id} but it is held by {other:?}; leaving it alone"
                ),
            }
        }
    }
    Ok(Outcome::Released(ReleaseOutcome::NoLease))
}

/// What the shim writes into the hooks it adds to a bundle.
#[derive(Debug, Clone)]
pub struct ShimHooks {
    /// The migrun binary the hooks run (the real file, not the `migrun-runtime` name).
    pub bin: PathBuf,
    /// `hook.env`: migrun's own settings (state dir, simulator, config) plus MIGRUN_ENGINE.
    pub env: Vec<(String, String)>,
    pub timeout_s: Option<u64>,
}

/// True when the shim can hand the bundle to runc untouched: its config asks for no slice and needs no guard
/// (what [`shim_create`] would answer with `Outcome::PassThrough`). The shim's fast path asks this before migrun
/// parses its command line, because most containers on a host ask for nothing. Any doubt (unreadable or
/// malformed config, a malformed request) answers `false`, and [`shim_create`] then reports it.
pub fn shim_passes_through(bundle: &Path) -> bool {
    BundleConfig::load(bundle)
        .is_ok_and(|cfg| matches!(request_of(&cfg.spec), Ok(None)) && !needs_guard(&cfg.spec))
}

/// The shim's `create`: allocate for a container that asks, and rewrite its bundle (env, lease marker,
/// a prestart hook that records the container's pid, a poststop hook that releases the slice).
pub fn shim_create(
    bundle: &Path,
    container: &str,
    engine: &str,
    ops: &mut dyn LeaseOps,
    hooks: &ShimHooks,
) -> Result<Outcome, OciError> {
    let cfg = BundleConfig::load(bundle)?;
    let Some(req) = request_of(&cfg.spec)? else {
        return guard_bundle(&cfg);
    };
    let holder = Holder::Container {
        id: container.to_string(),
        engine: engine.to_string(),
        pid: None,
    };
    let (lease, reused) = obtain(ops, &req, container, holder)?;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    mods.push(Box::new(AddHook::migrun(
        "prestart",
        &hooks.bin,
        &hooks.env,
        hooks.timeout_s,
        HookPosition::First,
    )));
    mods.push(Box::new(AddHook::migrun(
        "poststop",
        &hooks.bin,
        &hooks.env,
        hooks.timeout_s,
        HookPosition::Last,
    )));
    write_or_undo(ops, &cfg, &mods, &lease, reused)?;
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

#[cfg(test)]
mod tests;
