//! What the allocator tells the usage ledger and the metrics counters: grants, refusals, waits, gc's work; it must
//! not plan, touch the GPU or fail an operation (accounting that cannot be written is logged and counted).

use super::{AllocError, AllocRequest, GcReport};
use crate::config::Config;
use crate::gpu::Backend;
use crate::lease::ledger::{Event, LeaseFacts, Ledger, Refusal, DEFAULT_LEDGER};
use crate::lease::{self, Lease, Registry};
use crate::policy::no_room::Why;
use crate::statedir::StateDir;
use std::time::Duration;

/// The usage ledger of a state dir: the config's `ledger`, else `/var/lib/migrun/ledger.jsonl` for real GPUs
/// and `<state dir>/ledger.jsonl` for a simulated machine (its leases must not mix with the real ones').
pub fn ledger_of(state_dir: &std::path::Path, config: &Config, simulated: bool) -> Ledger {
    let path = match (&config.ledger, simulated) {
        (Some(p), _) => p.clone(),
        (None, true) => state_dir.join("ledger.jsonl"),
        // Under the host root: `/`, or a fake-NVML test machine's own root (debug builds), so tests never
        // write the host's ledger.
        (None, false) => {
            crate::gpu::hostfacts::host_root().join(DEFAULT_LEDGER.trim_start_matches('/'))
        }
    };
    Ledger::new(path, config.ledger_rotate_bytes, config.ledger_keep)
}

/// The registry of `dir`, appending to the ledger of [`ledger_of`].
pub(super) fn registry(
    dir: &StateDir,
    config: &Config,
    backend: &dyn Backend,
) -> Result<Registry, AllocError> {
    let simulated = matches!(backend.kind(), crate::gpu::BackendKind::Simulator { .. });
    Ok(Registry::open(dir)?.with_ledger(Some(ledger_of(dir.path(), config, simulated))))
}

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
        AllocError::Gpu(_)
        | AllocError::CreateCi(_)
        | AllocError::CiUnavailable { .. }
        | AllocError::Unreported { .. } => ("failed", None),
        // Bad input (an unknown profile or GPU, a bad size) was never a request, and a state dir that cannot be
        // read (a malformed record, another machine's) is not one to write counters into: neither is counted.
        AllocError::Lease(_)
        | AllocError::Binding(_)
        | AllocError::Profile(_)
        | AllocError::CiProfile(_)
        | AllocError::Size(_)
        | AllocError::BadGpu { .. }
        | AllocError::BadConfig { .. }
        | AllocError::BadWarm { .. }
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
