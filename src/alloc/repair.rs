//! Repairing what an interrupted allocation (or a claimed destroy whose process died) left, from its intent, under the
//! lock: drop the intent, or claim the destroy of the instance it made for `drain` to make without the lock; it must
//! not plan or name an engine. An intent licenses destroying only the instance its own create returned.

use super::reconcile::gpu_by_uuid;
use super::{AllocError, GcReport};
use crate::gpu::{Backend, MigState};
use crate::lease::{Intent, Lease, Registry};

/// Repair an intent whose process is gone (under the lock): drop it, or claim the destroy of the instance it made
/// (returned, made after the lock by `drain::run`; the intent is put back if the instance is busy).
pub(super) fn repair_intent(
    backend: &mut dyn Backend,
    reg: &Registry,
    state: &mut MigState,
    leases: &[Lease],
    intent: &Intent,
    report: &mut GcReport,
) -> Result<Option<super::drain::Job>, AllocError> {
    if let Some(ci) = &intent.ci {
        return super::share_end::repair(backend, reg, state, leases, intent, ci, report);
    }
    let leased =
        |gpu_uuid: &str, gi: u32| leases.iter().any(|l| l.gpu_uuid == gpu_uuid && l.gi == gi);
    let Some(gi) = intent.gi else {
        drop_unbound_intent(reg, state, intent, &leased, report)?;
        return Ok(None);
    };
    // The intent licenses destroying only the instance its create returned: that GI id, with the profile
    // and placement it was asked for.
    let found = gpu_by_uuid(state, &intent.gpu_uuid).and_then(|g| {
        let i = g.instances.iter().find(|i| {
            i.id == gi && i.profile_id == intent.profile_id && i.placement == intent.placement
        })?;
        Some((g.clone(), i.clone()))
    });
    let Some((g, i)) = found else {
        // The instance is gone already (or was replaced: then it is not the one the intent made).
        if !leased(&intent.gpu_uuid, gi) {
            reg.remove_created(&intent.gpu_uuid, gi)?;
        }
        reg.remove_intent(intent.lease)?;
        report.notes.push(format!(
            "dropped the journal of an interrupted allocation (lease {}, {} at {} on GPU {}): no instance of it exists",
            intent.lease, intent.profile, intent.placement, intent.gpu_index
        ));
        return Ok(None);
    };
    if leased(&g.info.uuid, i.id) {
        // The allocation did finish: its lease stands for the instance.
        reg.remove_intent(intent.lease)?;
        return Ok(None);
    }
    let what = format!(
        "GPU {} GI {} ({} at {}), left by an interrupted allocation (lease {})",
        g.info.index, i.id, intent.profile, i.placement, intent.lease
    );
    if i.processes > 0 {
        report.notes.push(format!(
            "{what} is in use; gc will destroy it once it is idle"
        ));
        return Ok(None);
    }
    // Claimed under the intent's own id: while this process destroys it, planners see it as taken.
    let claim = super::drain::as_claim(intent);
    reg.write_intent(&claim)?;
    let record = reg
        .created()?
        .into_iter()
        .find(|r| r.gpu_uuid == g.info.uuid && r.gi == i.id);
    Ok(Some(super::drain::Job {
        claim,
        restore: Some(intent.clone()),
        kind: super::drain::Kind::Orphan(Box::new(super::drain::Orphan {
            gpu: g,
            instance: i,
            record,
        })),
        purpose: super::drain::Purpose::Repair(what),
    }))
}

/// An intent without a journaled GI id: the allocation died before the driver's create returned, or in
/// the instant between that and the journal write. An instance of its profile at its placement may be
/// the one it made, or one someone made there since (an admin's `nvidia-smi mig -cgi`); nothing on the
/// device tells them apart, so the intent licenses no destroy. It is dropped, and a candidate instance
/// is left alone and reported, for a person to judge.
pub(super) fn drop_unbound_intent(
    reg: &Registry,
    state: &MigState,
    intent: &Intent,
    leased: &dyn Fn(&str, u32) -> bool,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    let created = reg.created()?;
    let candidate = gpu_by_uuid(state, &intent.gpu_uuid).and_then(|g| {
        g.instances
            .iter()
            .find(|i| {
                i.profile_id == intent.profile_id
                    && i.placement == intent.placement
                    && !leased(&g.info.uuid, i.id)
                    && !created
                        .iter()
                        .any(|r| r.gpu_uuid == g.info.uuid && r.gi == i.id)
            })
            .map(|i| (g.info.index, i.id))
    });
    reg.remove_intent(intent.lease)?;
    let head = format!(
        "dropped the journal of an interrupted allocation (lease {}, {} at {} on GPU {})",
        intent.lease, intent.profile, intent.placement, intent.gpu_index
    );
    report.notes.push(match candidate {
        None => format!("{head}: no instance of it exists"),
        Some((gpu, gi)) => format!(
            "{head}: GI {gi} there may be what it left or someone else's, and migrun cannot tell, so it leaves it alone \
             (if nobody uses it, remove it with `migrun teardown --gpu {gpu} --include-foreign` or nvidia-smi)"
        ),
    });
    Ok(())
}
