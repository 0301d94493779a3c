//! The shim binding a lease to its container without hooks: the init pid from the engine's `--pid-file` after the
//! runtime's create, and the release after the runtime's delete; it must not allocate, write any config, or act
//! on a lease that is not bound to the container the engine names.
//!
//! Why: with hooks, every container start through the shim runs migrun three times (the shim, prestart,
//! poststop), each a fresh process, and runc waits for both hooks. dockerd, containerd and podman always
//! give `runc create` a `--pid-file` and always call `runc delete` once the container is gone, and runc runs
//! poststop hooks inside that same `delete`; so the shim, which sees both calls, can do the hooks' work
//! itself at the same moments (docs/benchmarks.md, "CDI"). A container created without `--pid-file`
//! (plain `runc run`) still gets the hooks.
//!
//! The binding rests on what migrun recorded and what the runtime reports: the lease is bound to the id and
//! bundle the engine passed (as with hooks), the pid comes from the file the runtime wrote, and the
//! [`ShimRecord`] (written before the runtime's create) names the runtime root gc asks whether the
//! container still exists, so a shim killed between the create and the binding loses no slice.

use super::super::binding::{self, ShimRecord};
use super::super::*;
use super::{lease_err, LeaseOps, Outcome};
use crate::lease::{Lease, LeaseState};

/// After the runtime created `container` (exit 0) for lease `lease`: hand the lease from the waiting shim
/// to the container's init `pid` (read from the engine's `--pid-file`), compare-and-set under the lock
/// while it is still bound to this container and bundle. `Ok(false)` when it is not (released or taken
/// meanwhile): nothing changed.
pub fn shim_bind_pid(
    ops: &mut dyn LeaseOps,
    container: &str,
    bundle: &Path,
    engine: &str,
    lease: LeaseId,
    pid: u32,
) -> Result<bool, OciError> {
    let bundle = binding::canonical_bundle(bundle);
    let check =
        |l: &Lease| l.state == LeaseState::Active && binding::bound_to(l, container, &bundle);
    let to = binding::container_holder(container, engine, &bundle, Some(pid));
    ops.set_holder_if(lease, &check, to)
        .map_err(lease_err(format!(
            "cannot hand lease {lease} to container {container} (init pid {pid})"
        )))
}

/// What the shim's `delete` of a container does about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimDelete {
    /// No record for this id, or one of another runtime root: the delete is not migrun's business.
    NotOurs,
    /// The record's lease, to release once the runtime has removed the container.
    Release(ShimRecord),
}

/// Which lease (if any) the shim releases when the engine deletes `container` in runtime root `root`.
/// Only a record whose root is the one this delete names counts: two engines may use one id.
pub fn shim_delete_plan(
    ops: &mut dyn LeaseOps,
    container: &str,
    root: &Path,
) -> Result<ShimDelete, OciError> {
    let rec = ops.shim_record(container).map_err(lease_err(format!(
        "cannot read the shim's record of container {container}"
    )))?;
    Ok(match rec {
        Some(r) if r.id == container && r.root == root => ShimDelete::Release(r),
        _ => ShimDelete::NotOurs,
    })
}

/// The runtime's delete of `rec.id` ended and the runtime holds no such container any more: release
/// its lease (only while it is still bound to that container and bundle) and drop the record.
pub fn shim_deleted(ops: &mut dyn LeaseOps, rec: &ShimRecord) -> Result<Outcome, OciError> {
    let check = |l: &Lease| binding::bound_to(l, &rec.id, &rec.bundle);
    let out = ops
        .release_if(rec.lease, &check)
        .map_err(lease_err(format!(
            "cannot release lease {} of deleted container {}",
            rec.lease, rec.id
        )))?;
    if let Err(e) = ops.drop_shim_record(&rec.id) {
        tracing::warn!(
            lease = rec.lease,
            "cannot remove the shim's record of {}: {e}",
            rec.id
        );
    }
    Ok(Outcome::Released(out))
}

/// The runtime's create failed after the shim recorded `container`: the record goes with the lease.
pub fn shim_record_gone(ops: &mut dyn LeaseOps, container: &str) {
    if let Err(e) = ops.drop_shim_record(container) {
        tracing::warn!("cannot remove the shim's record of {container}: {e}");
    }
}
