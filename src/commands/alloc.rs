//! Handlers for `alloc`, `release` and `gc`: turn flags into an [`AllocRequest`], call `alloc`, record `--handover`'s token, print the result (text or JSON, see docs/leases.md).

use super::{Ctx, InputError};
use crate::alloc::{self, AllocRequest};
use crate::cli::{AllocArgs, GcArgs, ReleaseArgs, RequestArgs};
use crate::lease::{Holder, Lease, LeaseError, LeaseName};
use crate::policy::Want;
use crate::profile::parse_size_mib;
use anyhow::Result;
use std::io::Write;
use std::time::Duration;

/// JSON schema version of `alloc`, `release` and `gc` output.
pub const SCHEMA_VERSION: u32 = 1;

/// What `--profile` / `--min-mem` ask for.
pub(crate) fn want_of(r: &RequestArgs) -> Result<Want> {
    match (&r.profile, &r.min_mem) {
        (Some(p), None) => Ok(Want::parse_profile(p)?),
        (None, Some(m)) => Ok(Want::MinMemMib(parse_size_mib(m)?)),
        (Some(_), Some(_)) => Err(InputError::Other(
            "give either --profile or --min-mem, not both".into(),
        )
        .into()),
        (None, None) => Err(InputError::Other(
            "say what to allocate: --profile P (e.g. 3g.40gb, see `migrun profiles`) or --min-mem SIZE (e.g. 20g)".into(),
        )
        .into()),
    }
}

/// `--wait` (no value, or 0) waits forever; `--wait=S` up to S seconds; no flag: fail at once.
pub(crate) fn wait_of(r: &RequestArgs) -> Option<Option<Duration>> {
    r.wait.map(|s| (s > 0).then(|| Duration::from_secs(s)))
}

fn lease_json(l: &Lease) -> serde_json::Value {
    serde_json::json!({
        "schema": SCHEMA_VERSION,
        "lease": l.id,
        "mig_uuid": l.mig_uuid,
        "gpu": l.gpu_index,
        "gpu_uuid": l.gpu_uuid,
        "gi": l.gi,
        "ci": l.ci,
        "profile": l.profile,
        "profile_id": l.profile_id,
        "placement": l.placement,
        "created": l.created,
        "holder": l.holder,
        "uid": l.uid,
        "name": l.name,
        // What `podman run --device` / `docker run --device` takes (docs/cdi.md).
        "cdi": crate::cdi::spec::qualified_name(&l.id.to_string()),
    })
}

/// Refuse a root-only flag to anyone but plain root (not a user through sudo, not another uid), in one
/// line: `what` it is for, who the caller is, and `next`, what to do instead.
pub(super) fn plain_root_only(what: &str, next: &str) -> Result<()> {
    let caller = crate::caller::Caller::current();
    if caller.is_plain_root() {
        return Ok(());
    }
    Err(InputError::Other(format!(
        "{what}; you are uid {}{}. {next}",
        caller.uid,
        if caller.via_sudo { " through sudo" } else { "" }
    ))
    .into())
}

/// The holder for `--slurm-step`: the step, and the process that ran migrun (slurmstepd, running the SPANK plugin)
/// as its daemon, with the start time migrun reads itself. Only plain root: the step id is taken on the caller's
/// word, and a user who could name someone else's step would charge it a slice or keep one alive.
fn slurm_holder(step: crate::lease::SlurmStep) -> Result<Holder> {
    plain_root_only(
        &format!("--slurm-step {step} is for the migrun SPANK plugin inside slurmstepd, which runs as root"),
        "Use --holder-pid PID to tie a lease to your own process",
    )?;
    Ok(Holder::slurm(step, std::os::unix::process::parent_id())?)
}

/// `--handover` only for plain root: the token lets whoever holds it give the lease to any container
/// it starts, and the record it makes is root's (the state dir). Checked before anything is allocated.
fn check_handover(a: &AllocArgs) -> Result<()> {
    if !a.handover {
        return Ok(());
    }
    // Checked here rather than by clap, for one line that says why each is needed.
    if a.holder_pid.is_none() {
        return Err(InputError::Other(
            "--handover needs --holder-pid PID: the spawner's own process, which holds the lease until its container takes it over (and whose death lets gc free it)".into(),
        )
        .into());
    }
    if !a.json {
        return Err(InputError::Other(
            "--handover needs --json: the hand-over token is printed only there, for the spawner to pass to the container (MIGRUN_LEASE and MIGRUN_HANDOVER in its env)".into(),
        )
        .into());
    }
    plain_root_only(
        "--handover is for a spawner running as root (JupyterHub's MigrunSpawner) that hands the lease to a container it starts",
        "Start the container with migrun's runtime or launcher instead (docs/jupyter.md)",
    )
}

/// Record the hand-over of `lease` (held by the `--holder-pid` process) with a fresh token; the
/// token goes only to the caller, in the JSON. If that fails the lease is given back.
fn record_handover(
    session: &mut crate::commands::session::Session<'_>,
    lease: &Lease,
) -> Result<String> {
    let made = crate::engine::oci::binding::new_token()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot make a hand-over token from /dev/urandom: {e}; the lease was released"
            )
        })
        .and_then(|token| {
            let h = crate::engine::oci::binding::Handover {
                lease: lease.id,
                token: token.clone(),
                holder: lease.holder.clone(),
                created_at: crate::lease::now(),
            };
            super::hook::record_handover(session.dir(), &h).map_err(|e| {
                anyhow::Error::from(e).context(format!(
                    "cannot record the hand-over of lease {}; the lease was released",
                    lease.id
                ))
            })?;
            Ok(token)
        });
    if made.is_err() {
        if let Err(e) = session.release(&lease.id.to_string(), None) {
            crate::errln!("migrun: could not release lease {}: {e:#}", lease.id);
        }
    }
    made
}

pub fn alloc(ctx: &Ctx, a: &AllocArgs) -> Result<i32> {
    check_handover(a)?;
    let want = want_of(&a.request)?;
    let name = a
        .name
        .as_deref()
        .map(LeaseName::parse)
        .transpose()
        .map_err(LeaseError::from)?;
    let holder = match (a.holder_pid, a.slurm_step) {
        (Some(pid), _) => Holder::process(pid)?,
        (None, Some(step)) => slurm_holder(step)?,
        (None, None) => Holder::Manual,
    };
    let req = AllocRequest {
        want,
        gpu: a.request.gpu.clone(),
        wait: wait_of(&a.request),
        keep: a.request.keep,
        holder,
        // Root allocating for someone (the Slurm plugin, a hub spawner) names them; the delegation
        // check refuses --for-uid to a sudo user, who is always charged as themselves.
        uid: a.for_uid.unwrap_or_else(alloc::caller_uid),
        name,
    };
    let mut session = ctx.session()?;
    let lease = session.allocate(&req)?;
    if ctx.global.verbose > 0 {
        crate::errln!(
            "migrun: lease {} = {} {} at {} (GI {}) on GPU {} ({}){}",
            lease.id,
            if lease.created { "new" } else { "existing" },
            lease.profile,
            lease.placement,
            lease.gi,
            lease.gpu_index,
            lease.gpu_uuid,
            if lease.holder == Holder::Manual {
                "; release it with `migrun release ".to_string() + &lease.id.to_string() + "`"
            } else {
                format!("; held by {}", lease.holder)
            }
        );
        if let Some(w) = session.written() {
            let toolkit = super::cdi::toolkit_note(Ok(w.toolkit.as_deref()), &ctx.toolkit_paths());
            let also = lease.name.as_ref().map_or(String::new(), |n| {
                format!(" (also {})", crate::cdi::spec::qualified_name(n.as_str()))
            });
            crate::errln!(
                "migrun: CDI device {}{also} in {}, {toolkit}",
                crate::cdi::spec::qualified_name(&lease.id.to_string()),
                w.path.display()
            );
        }
    }
    let token = if a.handover {
        Some(record_handover(&mut session, &lease)?)
    } else {
        None
    };
    let text = if a.json {
        let mut doc = lease_json(&lease);
        if let Some(token) = &token {
            doc["handover"] = handover_json(&lease, token);
        }
        format!("{}\n", serde_json::to_string_pretty(&doc)?)
    } else {
        format!("{} lease {}\n", lease.mig_uuid, lease.id)
    };
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // The caller never learnt the lease (`alloc --json | true`), so nobody would release it: roll it back.
        let undo = session
            .release(&lease.id.to_string(), None)
            .err()
            .map(|e| format!("{e:#}"));
        return Err(alloc::AllocError::Unreported {
            lease: lease.id,
            mig_uuid: lease.mig_uuid,
            err,
            undo,
        }
        .into());
    }
    Ok(0)
}

/// What a spawner puts into the container's config to hand it the lease: the env form (docker before
/// 24 cannot set annotations) and the annotation form (podman, containerd), either one, with the request.
fn handover_json(l: &Lease, token: &str) -> serde_json::Value {
    use crate::engine::oci::{
        ANNOTATION_HANDOVER, ANNOTATION_LEASE, ANNOTATION_PROFILE, ENV_HANDOVER, ENV_LEASE,
        ENV_PROFILE,
    };
    let id = l.id.to_string();
    serde_json::json!({
        "token": token,
        "env": { ENV_PROFILE: l.profile, ENV_LEASE: id, ENV_HANDOVER: token },
        "annotations": { ANNOTATION_PROFILE: l.profile, ANNOTATION_LEASE: id, ANNOTATION_HANDOVER: token },
    })
}

pub fn release(ctx: &Ctx, a: &ReleaseArgs) -> Result<i32> {
    let out = ctx.session()?.release(&a.target, alloc::sudo_uid())?;
    if a.json {
        let doc = serde_json::json!({ "schema": SCHEMA_VERSION, "outcome": out });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        crate::outln!("{out}");
    }
    Ok(0)
}

pub fn gc(ctx: &Ctx, a: &GcArgs) -> Result<i32> {
    let report = ctx.session()?.gc()?;
    if a.json {
        let doc = serde_json::json!({ "schema": SCHEMA_VERSION, "report": report });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    for o in &report.released {
        crate::outln!("{o}");
    }
    for r in &report.repaired {
        crate::outln!("repaired: {r}");
    }
    for n in &report.notes {
        crate::outln!("{n}");
    }
    if report.released.is_empty() && report.repaired.is_empty() && report.notes.is_empty() {
        crate::outln!("nothing to do: every lease has a live holder and every instance migrun made is accounted for");
    }
    Ok(0)
}
