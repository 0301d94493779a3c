//! What the allocator tells the usage ledger and the metrics counters: grants, refusals, waits, gc's work; it must
//! not plan, touch the GPU or fail an operation (accounting that cannot be written is logged and counted).

use super::{AllocError, AllocRequest, GcReport};
use crate::lease::ledger::{Event, LeaseFacts, Refusal};
use crate::lease::{self, Lease, Registry};
use crate::policy::no_room::Why;
use std::time::Duration;

/// A lease was just recorded (under the lock): `result` is `created` or `reused`.
pub(super) fn granted(reg: &Registry, l: &Lease, result: &str) {
    reg.log(&Event::Grant {
        at: l.created_at,
        lease: LeaseFacts::of(l),
    });
    if let Err(e) = reg.update_counters(|c| c.bump_allocation(result)) {
        tracing::warn!("metrics counters: {e}");
    }
}

/// The counter label and ledger refusal of a failed allocation.
fn refusal(e: &AllocError) -> (&'static str, Option<Refusal>) {
    match e {
        AllocError::NoRoom(_) | AllocError::Queued { .. } => ("no_room", Some(Refusal::NoRoom)),
        AllocError::LimitReached { .. } | AllocError::NotManaged { .. } => {
            ("refused_policy", Some(Refusal::Policy))
        }
        // Every GPU said "not in allowed_profiles": the config refuses it, nothing else.
        AllocError::Unsatisfiable(nr)
            if !nr.gpus.is_empty()
                && nr
                    .gpus
                    .iter()
                    .all(|g| matches!(g.why, Why::NotAllowed { .. })) =>
        {
            ("refused_policy", Some(Refusal::Policy))
        }
        AllocError::Unsatisfiable(_) => ("unsatisfiable", Some(Refusal::Unsatisfiable)),
        // The driver failed: worth a graph.
        AllocError::Gpu(_) | AllocError::CreateCi(_) | AllocError::Unreported { .. } => {
            ("failed", None)
        }
        // Bad input (an unknown profile or GPU, a bad size) was never a request, and a state dir that cannot be
        // read (a malformed record, another machine's) is not one to write counters into: neither is counted.
        AllocError::Lease(_)
        | AllocError::Binding(_)
        | AllocError::Profile(_)
        | AllocError::Size(_)
        | AllocError::BadGpu { .. }
        | AllocError::BadConfig { .. }
        | AllocError::NoGpus
        | AllocError::NotYours { .. } => ("", None),
    }
}

/// After an allocation: count a refusal and log it, and log and observe a wait. The common case (granted at
/// once) was counted by [`granted`] under the allocation's own lock and costs nothing more here.
pub(super) fn outcome(
    reg: &Registry,
    req: &AllocRequest,
    out: &Result<Lease, AllocError>,
    waited: Option<Duration>,
) {
    let refused = out
        .as_ref()
        .err()
        .map(refusal)
        .filter(|(label, _)| !label.is_empty());
    if refused.is_none() && waited.is_none() {
        return;
    }
    let Ok(_lock) = reg.lock() else { return };
    let at = lease::now();
    let want = req.want.to_string();
    if let Some(w) = waited {
        reg.log(&Event::Wait {
            at,
            uid: req.uid,
            want: want.clone(),
            waited_s: w.as_secs(),
            granted: out.is_ok(),
        });
    }
    if let Some((_, Some(reason))) = refused {
        reg.log(&Event::Refusal {
            at,
            uid: req.uid,
            want,
            reason,
        });
    }
    let counted = reg.update_counters(|c| {
        if let Some(w) = waited {
            c.observe_wait(w.as_secs_f64());
        }
        if let Some((label, _)) = refused {
            c.bump_allocation(label);
        }
    });
    if let Err(e) = counted {
        tracing::warn!("metrics counters: {e}");
    }
}

/// Count what a sweep did (the caller holds the lock).
pub(super) fn gc(reg: &Registry, report: &GcReport) {
    if report.destroyed + report.drained == 0 && report.repaired.is_empty() {
        return;
    }
    let counted = reg.update_counters(|c| {
        c.bump_gc("destroyed", report.destroyed);
        c.bump_gc("drained", report.drained);
        c.bump_gc("repaired", report.repaired.len() as u64);
    });
    if let Err(e) = counted {
        tracing::warn!("metrics counters: {e}");
    }
}
