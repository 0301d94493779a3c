//! `migrun release LEASE --if-handover-pending`: a spawner gives back a lease it made with `alloc --handover` only while no container has taken it over, decided under the lock from migrun's own records; it must never free a lease a container (or anyone but the recorded process) holds.
//!
//! Why a command of its own: a spawner that sees its container fail cannot tell from outside whether the
//! runtime shim took the lease over first (docker may fail after `create`). Only migrun's records say:
//! the hand-over record names the process the lease was handed out from, and the shim's takeover swaps
//! the holder by compare-and-set under the allocation lock. Releasing with the same compare under the
//! same lock means exactly one of the two wins.

use super::{Ctx, InputError};
use crate::alloc::ReleaseOutcome;
use crate::cli::ReleaseArgs;
use crate::lease::{Holder, Lease, LeaseError, LeaseId, Registry};
use anyhow::Result;

/// Plain root only (the delegation check has refused a sudo user already), and a lease id: the
/// hand-over record is kept per id, and a name or MIG UUID could name another lease by the time it
/// is looked up.
fn check(a: &ReleaseArgs) -> Result<LeaseId> {
    super::alloc::plain_root_only(
        "--if-handover-pending is for a spawner running as root (JupyterHub's MigrunSpawner) that gives back a lease it made with `alloc --handover`",
        "Release your own lease with `migrun release LEASE`",
    )?;
    let digits = !a.target.is_empty() && a.target.bytes().all(|b| b.is_ascii_digit());
    match a.target.parse::<LeaseId>() {
        Ok(id) if digits => Ok(id),
        _ => Err(InputError::Other(format!(
            "--if-handover-pending takes the lease id `migrun alloc --handover` printed (a number), not {:?}; `migrun status` lists the leases",
            a.target
        ))
        .into()),
    }
}

/// Why lease `l` is not released: who holds it and what that means for the spawner.
fn kept_note(l: &Lease, pending_from: Option<&Holder>) -> String {
    let id = l.id;
    match (&l.holder, pending_from) {
        (Holder::Container { .. }, _) => format!(
            "lease {id} not released: {} took it over and holds it; it is released when that container is gone",
            l.holder
        ),
        (holder, Some(from)) => format!(
            "lease {id} not released: it is held by {holder}, not by {from} that its hand-over was recorded for; `migrun release {id}` ends it regardless"
        ),
        (holder, None) => format!(
            "lease {id} not released: it is held by {holder} and has no pending hand-over (not made by `alloc --handover`, or taken over already); `migrun release {id}` ends it regardless"
        ),
    }
}

pub fn release_if_pending(ctx: &Ctx, a: &ReleaseArgs) -> Result<i32> {
    let id = check(a)?;
    let mut session = ctx.session()?;
    let dir = session.dir().clone();
    let reg = Registry::open(&dir)?;
    // An unknown lease is the error a plain release gives (exit 2); nothing is released by id
    // here without a hand-over record to check it against.
    if reg.lease(id)?.is_none() {
        return Err(LeaseError::Unknown {
            target: a.target.clone(),
        }
        .into());
    }
    // The record is written once, before `alloc --handover` prints the token, and never changed;
    // reading it outside the lock is safe. The holder is compared under the lock, by release_if.
    let rel = super::hook::handover_rel(id);
    let pending = match dir.read(&rel)? {
        Some(bytes) => Some(super::hook::parse_handover(&dir, id, &bytes)?.holder),
        None => None,
    };
    let out = match &pending {
        Some(from) => session.release_held(id, &|l: &Lease| &l.holder == from)?,
        None => ReleaseOutcome::NoLease,
    };
    if out.lease().is_some() {
        // The record licensed this one release; a later hand-over of this id cannot happen (ids are
        // never reused), so it only goes stale. Left behind, the next `alloc --handover` prunes it.
        let _ = std::fs::remove_file(dir.join(&rel));
        if a.json {
            let doc = serde_json::json!({ "schema": super::alloc::SCHEMA_VERSION, "outcome": out });
            crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            crate::outln!("{out}");
        }
        return Ok(0);
    }
    // Not released: say who holds it now (read again: it may have changed hands under the lock).
    let (note, holder) = match reg.lease(id)? {
        Some(l) => (kept_note(&l, pending.as_ref()), Some(l.holder)),
        None => (
            format!("lease {id} not released: it was released meanwhile (its container's poststop, or gc); nothing to do"),
            None,
        ),
    };
    if a.json {
        let doc = serde_json::json!({
            "schema": super::alloc::SCHEMA_VERSION,
            "outcome": { "result": "not-released", "lease": id, "holder": holder, "note": note },
        });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        crate::outln!("{note}");
    }
    Ok(0)
}
