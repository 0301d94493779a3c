//! status's view of a GPU instance migrun shares among compute-instance leases (issue 22): which lease holds
//! which of its compute instances, and the lines listing them; it must not change anything.

use crate::gpu::{ComputeInstance, GpuInstance, GpuState};
use crate::lease::{Lease, LeaseState};
use crate::policy::plan::Owner;

/// The compute-instance lease holding compute instance `c` of GI `gi` on `g` (same CI id and MIG UUID).
pub(super) fn ci_lease<'a>(
    leases: &'a [Lease],
    g: &GpuState,
    gi: u32,
    c: &ComputeInstance,
) -> Option<&'a Lease> {
    leases.iter().find(|l| {
        l.gpu_uuid == g.info.uuid && l.gi == gi && l.ci == c.id && l.mig_uuid == c.mig_uuid
    })
}

/// One line per compute instance of `i`, under its GPU instance's line: id, profile, MIG UUID and its
/// lease as `owner_text` words it.
pub(super) fn print_cis(
    g: &GpuState,
    i: &GpuInstance,
    leases: &[Lease],
    owner_text: fn(&Owner, &[Lease]) -> String,
) -> anyhow::Result<()> {
    for c in &i.compute_instances {
        let lease = ci_lease(leases, g, i.id, c);
        let owner = lease.map_or("no lease".into(), |l| {
            owner_text(
                &Owner::Lease {
                    id: l.id,
                    draining: l.state == LeaseState::Draining,
                },
                leases,
            )
        });
        crate::outln!(
            "      CI {:>2}  {:<12} {:<40}  {}",
            c.id,
            lease.map_or("", |l| l.profile.as_str()),
            c.mig_uuid,
            owner
        );
    }
    Ok(())
}
