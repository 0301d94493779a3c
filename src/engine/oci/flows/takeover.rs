//! Taking a lease over for a container: the compare-and-set hand-over from a recorded holder (precreate's
//! engine process, a spawner's `migrun alloc --handover`) checked against migrun's own records; it must
//! not decide which lease a config means (the flows do) nor write any config.

use super::super::binding;
use super::super::*;
use super::{lease_err, LeaseOps};
use crate::lease::{Holder, Lease, LeaseState};

/// Give lease `id` from `from` to `to`, compare-and-set under the lock; false when it changed hands.
pub(super) fn hand_to(
    ops: &mut dyn LeaseOps,
    id: LeaseId,
    from: Holder,
    to: Holder,
    container: &str,
) -> Result<bool, OciError> {
    let check = move |x: &Lease| x.holder == from && x.state == LeaseState::Active;
    ops.set_holder_if(id, &check, to).map_err(lease_err(format!(
        "cannot hand lease {id} to container {container}"
    )))
}

/// Why a container may not take a lease over: a reason for [`OciError::StaleMarker`], or an error
/// of its own (a read that failed, a config that does not name the device).
pub(super) enum Refused {
    Reason(String),
    Err(OciError),
}

impl Refused {
    pub(super) fn stale(self, cfg: &BundleConfig, lease: LeaseId) -> OciError {
        match self {
            Refused::Reason(reason) => OciError::StaleMarker {
                path: cfg.path.clone(),
                lease,
                reason,
            },
            Refused::Err(e) => e,
        }
    }
}

impl From<OciError> for Refused {
    fn from(e: OciError) -> Self {
        Refused::Err(e)
    }
}

/// Hand lease `l`, held by a recorded process, to the container `to` with the token its config
/// carries: only when migrun recorded a hand-over with exactly this token for `l` (podman's precreate,
/// or a spawner's `migrun alloc --handover`) and `l` is still held by the process that record names.
/// The change is a compare-and-set under the lock and the record is dropped after it, so a token is
/// good once. `verify` runs once the lease is known to be the container's (prestart checks the device
/// the config names). The lease keeps its uid: a spawner's lease stays charged to its user.
pub(super) fn take_over(
    ops: &mut dyn LeaseOps,
    l: &Lease,
    token: Option<&str>,
    verify: &dyn Fn() -> Result<(), OciError>,
    to: Holder,
    container: &str,
) -> Result<(), Refused> {
    let id = l.id;
    let reason = match (&l.holder, token) {
        (Holder::Process { pid, .. }, Some(token)) => {
            let record = ops
                .handover(id)
                .map_err(lease_err(format!("cannot read the hand-over of lease {id}")))?;
            match record {
                Some(h) if binding::tokens_equal(&h.token, token) && h.holder == l.holder => {
                    verify()?;
                    if hand_to(ops, id, h.holder.clone(), to, container)? {
                        if let Err(e) = ops.drop_handover(id) {
                            tracing::warn!(lease = id, "cannot remove the used hand-over record: {e}");
                        }
                        return Ok(());
                    }
                    "was handed over to another container already".to_string()
                }
                _ => format!(
                    "is held by process {pid}, and the config's hand-over token is not the one migrun recorded for it"
                ),
            }
        }
        (Holder::Process { pid, .. }, None) => format!(
            "is held by process {pid}, and the config carries no hand-over token from migrun's precreate or `migrun alloc --handover`"
        ),
        (Holder::Container { id: c, .. }, _) if c == container => {
            "is held by a container with this id but another bundle".to_string()
        }
        (Holder::Container { id: c, .. }, _) => format!("is held by container {c}"),
        (Holder::Launcher { .. }, _) => "is held by the docker launcher".to_string(),
        (Holder::Slurm { step, .. }, _) => format!("is held by slurm job {step}"),
        (Holder::Manual, _) => "is a manual lease (migrun alloc)".to_string(),
    };
    Err(Refused::Reason(reason))
}

/// The shim's create of a config that names lease `id` with a hand-over token (a spawner's `migrun
/// alloc --handover`, passed as env because docker cannot set annotations): the lease, and whether it
/// was already this container's (a retried create). Taken over only as [`take_over`] allows; a config
/// that names a lease it may not take is refused, and nothing changes.
pub(super) fn shim_take_over(
    ops: &mut dyn LeaseOps,
    cfg: &BundleConfig,
    id: LeaseId,
    token: &str,
    container: &str,
    bundle: &Path,
    to: Holder,
) -> Result<(Lease, bool), OciError> {
    let stale = |reason: &str| OciError::StaleMarker {
        path: cfg.path.clone(),
        lease: id,
        reason: reason.to_string(),
    };
    let l = ops
        .lease(id)
        .map_err(lease_err(format!("cannot read lease {id}")))?
        .ok_or_else(|| stale("does not exist (released or collected)"))?;
    if l.state != LeaseState::Active {
        return Err(stale("is being released"));
    }
    if binding::bound_to(&l, container, bundle) {
        return Ok((l, true));
    }
    take_over(ops, &l, Some(token), &|| Ok(()), to.clone(), container)
        .map_err(|e| e.stale(cfg, id))?;
    Ok((Lease { holder: to, ..l }, false))
}
