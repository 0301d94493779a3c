//! The hook flows (precreate, prestart, poststop) and the shim's create, over [`LeaseOps`]; each acts only on
//! the lease bound to its own container ([`super::binding`]), never on one a config names.

use super::binding::{self, Handover};
use super::*;
use crate::alloc::ReleaseOutcome;
use crate::lease::{Holder, Lease, LeaseState};
use std::fmt;

/// A condition on a lease that the lease store checks under its lock, right before it acts.
pub type LeaseCheck<'a> = &'a dyn Fn(&Lease) -> bool;

/// The lease operations a hook needs; the real one opens the state dir and the GPU backend lazily.
pub trait LeaseOps {
    /// Allocate a slice for `req`, held by `holder`.
    fn allocate(&mut self, req: &Request, holder: Holder) -> Result<Lease, OpsError>;
    /// One lease by id.
    fn lease(&mut self, id: LeaseId) -> Result<Option<Lease>, OpsError>;
    /// Every lease held by a container with this id, whatever its engine or bundle (the flows pick the
    /// one bound to their bundle).
    fn leases_of_container(&mut self, id: &str) -> Result<Vec<Lease>, OpsError>;
    /// Give lease `id` to `to` if `check` holds for it under the lock; `false` (nothing changed) otherwise.
    fn set_holder_if(
        &mut self,
        id: LeaseId,
        check: LeaseCheck,
        to: Holder,
    ) -> Result<bool, OpsError>;
    /// Release lease `id`, which this flow has just made (undo after a later step failed).
    fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError>;
    /// Release lease `id` only if `check` holds for it under the lock; `NoLease` otherwise.
    fn release_if(&mut self, id: LeaseId, check: LeaseCheck) -> Result<ReleaseOutcome, OpsError>;
    /// Record precreate's hand-over of a lease (kept out of the lease record, see [`super::binding`]).
    fn record_handover(&mut self, h: &Handover) -> Result<(), OpsError>;
    /// The hand-over recorded for a lease, if any.
    fn handover(&mut self, lease: LeaseId) -> Result<Option<Handover>, OpsError>;
    /// Forget a hand-over (taken, or its lease released).
    fn drop_handover(&mut self, lease: LeaseId) -> Result<(), OpsError>;
    /// Record that the shim binds `r.id`'s lease itself (no hooks; see [`binding::ShimRecord`]).
    fn record_shim(&mut self, r: &binding::ShimRecord) -> Result<(), OpsError>;
    /// The shim's record for container `id`, if any.
    fn shim_record(&mut self, id: &str) -> Result<Option<binding::ShimRecord>, OpsError>;
    /// Forget the shim's record for container `id` (its lease released, or never made).
    fn drop_shim_record(&mut self, id: &str) -> Result<(), OpsError>;
    /// The CDI edits (from the lease's spec) to write into the config of a container holding `lease`
    /// when the hooks inject by CDI; `None` when they inject by env only, for NVIDIA's hook to read.
    fn cdi_edits(
        &mut self,
        lease: &Lease,
    ) -> Result<Option<crate::cdi::types::ContainerEdits>, OpsError>;
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

/// What a container that holds `lease` gets written into its config before the runtime reads it:
/// markers cleared, the env and marker of the lease, and, when the hooks inject by CDI, the lease's
/// CDI edits. `Err` is reading the lease's spec.
fn grant_modifiers(
    ops: &mut dyn LeaseOps,
    lease: &Lease,
) -> Result<Vec<Box<dyn SpecModifier>>, OciError> {
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(lease));
    let edits = ops.cdi_edits(lease).map_err(lease_err(format!(
        "cannot read the CDI spec of lease {}",
        lease.id
    )))?;
    if let Some(edits) = edits {
        mods.push(Box::new(ApplyCdi { edits }));
    }
    Ok(mods)
}

/// podman's precreate stage: config JSON in, modified config out.
///
/// The lease is held by `holder` (the engine process, podman) until prestart hands it to the
/// container. There is no container id yet, so precreate records a [`Handover`] with a fresh token
/// and writes the token into the config it returns: only a prestart whose config.json carries it may
/// take the lease over, and poststop of a container that failed before prestart may free it.
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
    let lease = ops
        .allocate(&req, holder.clone())
        .map_err(lease_err(format!(
            "cannot allocate {} ({})",
            req.profile, req.source
        )))?;
    // podman writes the config it gets back as the container's config.json, so the CDI edits made
    // here reach the runtime.
    let mut mods = match grant_modifiers(ops, &lease) {
        Ok(m) => m,
        Err(e) => return Err(undo(ops, &lease, e)),
    };
    let handover = match binding::new_token() {
        Ok(token) => Handover {
            lease: lease.id,
            token,
            holder,
            created_at: crate::lease::now(),
        },
        Err(e) => {
            let err = lease_err("cannot make a hand-over token from /dev/urandom")(e.into());
            return Err(undo(ops, &lease, err));
        }
    };
    if let Err(e) = ops.record_handover(&handover) {
        let err = lease_err(format!("cannot record the hand-over of lease {}", lease.id))(e);
        return Err(undo(ops, &lease, err));
    }
    let mut spec = spec;
    mods.push(Box::new(SetAnnotation {
        key: ANNOTATION_HANDOVER.into(),
        value: handover.token.clone(),
    }));
    let emitted = apply_all(&mut spec, &mods)
        .map_err(|reason| OciError::BadConfig {
            path: path.into(),
            reason,
        })
        .and_then(|_| {
            emit(&serde_json::to_vec(&spec).expect("serializes")).map_err(OciError::Emit)
        });
    if let Err(e) = emitted {
        let _ = ops.drop_handover(lease.id);
        return Err(undo(ops, &lease, e));
    }
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused: false,
    })
}

/// OCI prestart / createRuntime: allocate (or adopt the lease precreate or the shim made) and rewrite
/// `<bundle>/config.json`, so that a later prestart hook (nvidia-container-runtime-hook) mounts that MIG device.
///
/// `engine` comes from the hook's own env (`MIGRUN_ENGINE`, set by the shim on the hooks it adds or by
/// the admin in a hooks.d entry), never from the container's annotations, which the container chooses.
/// Without it the holder is recorded as plain `runc` (CRI-O runs runc with runc's default root, so gc
/// asks the same place).
pub fn prestart(
    state_json: &[u8],
    ops: &mut dyn LeaseOps,
    engine: Option<&str>,
) -> Result<Outcome, OciError> {
    let state = parse_state(state_json, "prestart")?;
    let cfg = BundleConfig::load(&state.bundle)?;
    let bundle = binding::canonical_bundle(&state.bundle);
    let req = request_of(&cfg.spec)?;
    let marker = lease_marker(&cfg.spec)?;

    if let (Some(id), Some(_)) = (marker, &req) {
        return adopt(ops, &cfg, &state, &bundle, id, engine);
    }

    let Some(req) = req else {
        return guard_bundle(&cfg);
    };
    let holder = binding::container_holder(&state.id, engine.unwrap_or("runc"), &bundle, state.pid);
    let (lease, reused) = obtain(ops, &req, &state.id, &bundle, holder)?;
    // No CDI edits here: runc read config.json at create, so device nodes added now would never be
    // made; only a later hook that re-reads the file (NVIDIA's) acts on what prestart writes.
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    write_or_undo(ops, &cfg, &mods, &lease, reused)?;
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

/// prestart of a config that names lease `id`: take it over only when migrun's own records say it is
/// this container's, never because the config says so.
///
/// Two ways qualify. The shim made it for this very container (the lease is bound to this id and
/// bundle): prestart records the init pid. Or podman's precreate made it: the config carries the
/// token precreate recorded for the lease, and the lease is still held by the process precreate
/// recorded; then the lease is bound to this container (compare-and-set under the lock, so a token
/// is good once) and the hand-over record is dropped. Anything else refuses the start and changes
/// nothing: a config can name any lease id and any (public) MIG UUID.
fn adopt(
    ops: &mut dyn LeaseOps,
    cfg: &BundleConfig,
    state: &HookState,
    bundle: &Path,
    id: LeaseId,
    engine: Option<&str>,
) -> Result<Outcome, OciError> {
    let stale = |reason: String| OciError::StaleMarker {
        path: cfg.path.clone(),
        lease: id,
        reason,
    };
    let l = ops
        .lease(id)
        .map_err(lease_err(format!("cannot read lease {id}")))?
        .ok_or_else(|| stale("does not exist (released or collected)".into()))?;
    if l.state != LeaseState::Active {
        return Err(stale("is being released".into()));
    }
    // Checked once the lease is known to be this container's: for anyone else's, whose it is says more.
    let names_device = || {
        if env_lookup(&cfg.spec, NVIDIA_VISIBLE_DEVICES) == [l.mig_uuid.as_str()] {
            Ok(())
        } else {
            Err(stale(format!(
                "is {} but NVIDIA_VISIBLE_DEVICES does not name it",
                l.mig_uuid
            )))
        }
    };
    let adopted = Outcome::Adopted {
        lease: id,
        mig_uuid: l.mig_uuid.clone(),
    };

    if binding::bound_to(&l, &state.id, bundle) {
        let Holder::Container { engine: tag, .. } = &l.holder else {
            unreachable!("bound_to holds only for container holders")
        };
        names_device()?;
        let to = binding::container_holder(&state.id, tag, bundle, state.pid);
        if l.holder == to || hand_to(ops, id, l.holder.clone(), to, &state.id)? {
            return Ok(adopted);
        }
        return Err(stale("changed hands while this container started".into()));
    }

    let token = handover_token(&cfg.spec)?;
    let to = binding::container_holder(&state.id, engine.unwrap_or("podman"), bundle, state.pid);
    take_over(ops, &l, token.as_deref(), &names_device, to, &state.id)
        .map_err(|e| e.stale(cfg, id))?;
    Ok(adopted)
}

/// The lease bound to this container (a retried create or prestart), or a new one.
fn obtain(
    ops: &mut dyn LeaseOps,
    req: &Request,
    container: &str,
    bundle: &Path,
    holder: Holder,
) -> Result<(Lease, bool), OciError> {
    let existing = ops
        .leases_of_container(container)
        .map_err(lease_err(format!(
            "cannot read the leases of container {container}"
        )))?
        .into_iter()
        .find(|l| l.state == LeaseState::Active && binding::bound_to(l, container, bundle));
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
/// This container's lease is the one bound to the id and bundle the runtime reports in the state
/// JSON. The only other lease it may free is one precreate made for its config and never handed over
/// (the container failed before prestart), proven by the hand-over token in its config.json. A lease
/// its config merely names (`migrun.lease`, `MIGRUN_LEASE`) is left alone: runc runs poststop for a
/// container prestart refused, too.
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
    let (marker, token, asked) = match &cfg {
        Some(c) => (
            lease_marker(&c.spec).ok().flatten(),
            handover_token(&c.spec).ok().flatten(),
            // A malformed request still may have left a lease behind (timeout): look it up by id.
            !matches!(request_of(&c.spec), Ok(None)),
        ),
        None => (None, None, true),
    };
    if marker.is_none() && !asked {
        return Ok(Outcome::PassThrough);
    }
    let bundle = binding::canonical_bundle(&state.bundle);
    let context = || format!("cannot release the lease of container {}", state.id);
    let ours = ops
        .leases_of_container(&state.id)
        .map_err(lease_err(context()))?;
    for l in ours
        .iter()
        .filter(|l| binding::bound_to(l, &state.id, &bundle))
    {
        let check = |x: &Lease| binding::bound_to(x, &state.id, &bundle);
        let out = ops.release_if(l.id, &check).map_err(lease_err(context()))?;
        if out != ReleaseOutcome::NoLease {
            return Ok(Outcome::Released(out));
        }
    }
    if let (Some(id), Some(token)) = (marker, token) {
        let record = ops.handover(id).map_err(lease_err(format!(
            "cannot read the hand-over of lease {id}"
        )))?;
        if let Some(h) = record.filter(|h| binding::tokens_equal(&h.token, &token)) {
            let check = |x: &Lease| x.holder == h.holder;
            let out = ops
                .release_if(id, &check)
                .map_err(lease_err(format!("cannot release lease {id}")))?;
            if let Err(e) = ops.drop_handover(id) {
                tracing::warn!(lease = id, "cannot remove the hand-over record: {e}");
            }
            return Ok(Outcome::Released(out));
        }
    }
    if let Some(id) = marker {
        tracing::info!(
            lease = id,
            "config.json names lease {id}, which is not this container's; leaving it alone"
        );
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
    /// `Some(root)`: the shim binds the lease itself (the engine passed `--pid-file`, so the shim
    /// learns the init pid when the create returns, and it sees the engine's `delete`), so no hook is
    /// added: two fewer migrun processes per container. `root` is the runtime's `--root`.
    pub binds_itself: Option<PathBuf>,
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
///
/// The lease is bound to `container` and `bundle` as the engine passed them to the runtime. `waiter` is
/// the process that waits for the runtime's create (the shim itself): recorded as the holder's pid until
/// prestart replaces it with the container's init, so that if the shim is killed and the create then
/// fails, gc sees the holder gone instead of keeping the lease forever.
pub fn shim_create(
    bundle: &Path,
    container: &str,
    engine: &str,
    ops: &mut dyn LeaseOps,
    hooks: &ShimHooks,
    waiter: Option<u32>,
) -> Result<Outcome, OciError> {
    let cfg = BundleConfig::load(bundle)?;
    let Some(req) = request_of(&cfg.spec)? else {
        return guard_bundle(&cfg);
    };
    let bundle = binding::canonical_bundle(bundle);
    let holder = binding::container_holder(container, engine, &bundle, waiter);
    // The marker is read only when a token comes with it: alone it proves nothing, and the shim has
    // always replaced it, however malformed, with the marker of the container's own lease.
    let token = handover_token(&cfg.spec)?;
    let marker = match &token {
        Some(_) => lease_marker(&cfg.spec)?,
        None => None,
    };
    let handed = match (marker, token) {
        (Some(id), Some(token)) => Some(shim_take_over(
            ops,
            &cfg,
            id,
            &token,
            container,
            &bundle,
            holder.clone(),
        )?),
        // A marker without a token (or a token without a marker) proves nothing: the request gets a
        // lease of its own and the markers are replaced below.
        _ => None,
    };
    let (lease, reused, adopted) = match handed {
        Some((l, reused)) => (l, reused, !reused),
        None => {
            let (l, reused) = obtain(ops, &req, container, &bundle, holder)?;
            (l, reused, false)
        }
    };
    let mut mods = match grant_modifiers(ops, &lease) {
        Ok(m) => m,
        Err(e) if reused => return Err(e),
        Err(e) => return Err(undo(ops, &lease, e)),
    };
    let record = hooks.binds_itself.as_ref().and_then(|root| {
        binding::shim_record_rel(container).map(|_| binding::ShimRecord {
            lease: lease.id,
            id: container.to_string(),
            root: root.clone(),
            bundle: bundle.clone(),
        })
    });
    if record.is_none() {
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
    } else {
        // A bundle reused from a create that added hooks (a retried create) keeps none of them:
        // the shim binds and releases this lease itself.
        mods.push(Box::new(RemoveMigrunHooks));
    }
    // The record goes first: once config.json is written the runtime may create the container, and
    // gc and the shim's delete find its lease through the record.
    if let Some(r) = &record {
        if let Err(e) = ops.record_shim(r) {
            let err = lease_err(format!(
                "cannot record the shim's binding of lease {}",
                lease.id
            ))(e);
            return Err(if reused { err } else { undo(ops, &lease, err) });
        }
    }
    if let Err(e) = write_or_undo(ops, &cfg, &mods, &lease, reused) {
        if record.is_some() && !reused {
            let _ = ops.drop_shim_record(container);
        }
        return Err(e);
    }
    if adopted {
        return Ok(Outcome::Adopted {
            lease: lease.id,
            mig_uuid: lease.mig_uuid,
        });
    }
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

/// The runtime's create failed after [`shim_create`] made `lease` for it: give the lease back.
///
/// runc can fail before it runs any hook (a relative `process.cwd`, a duplicate container id, a bad
/// mount), and then no poststop ever runs. The lease is released only while it is still bound to this
/// container; one reused from an earlier create (`reused`) belongs to the container that create made,
/// which may be running (a duplicate id), so the caller passes only leases it made itself.
pub fn shim_create_failed(
    ops: &mut dyn LeaseOps,
    container: &str,
    bundle: &Path,
    lease: LeaseId,
) -> Result<Outcome, OciError> {
    let bundle = binding::canonical_bundle(bundle);
    let check = |l: &Lease| binding::bound_to(l, container, &bundle);
    let out = ops.release_if(lease, &check).map_err(lease_err(format!(
        "cannot release lease {lease} after the runtime failed to create container {container}"
    )))?;
    Ok(Outcome::Released(out))
}

mod shimbind;
mod takeover;
pub use shimbind::{shim_bind_pid, shim_delete_plan, shim_deleted, shim_record_gone, ShimDelete};
use takeover::{hand_to, shim_take_over, take_over};

#[cfg(test)]
mod tests;
