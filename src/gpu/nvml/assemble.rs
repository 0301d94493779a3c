//! Joining the GPU instances NVML lists with their MIG devices (compute instances, UUIDs, processes) into migrun's plain `GpuInstance`s; it must not create or destroy anything.

use super::{ffi, NvmlBackend};
use crate::gpu::{ComputeInstance, GpuError, GpuInstance, Placement};

impl NvmlBackend {
    /// Join GPU instances with their MIG devices (compute instances, UUIDs, processes).
    pub(super) fn assemble(
        &mut self,
        gpu: u32,
        gis: Vec<ffi::GiInfo>,
    ) -> Result<Vec<GpuInstance>, GpuError> {
        let migs = if gis.is_empty() {
            Vec::new()
        } else {
            self.mig_devices(gpu)?
        };
        let mut out: Vec<GpuInstance> = gis
            .into_iter()
            .map(|g| {
                let mut cis: Vec<&(u32, u32, String, u32)> =
                    migs.iter().filter(|m| m.0 == g.id).collect();
                cis.sort_by_key(|m| m.1);
                GpuInstance {
                    id: g.id,
                    profile_id: g.profile_id,
                    placement: Placement {
                        start: g.start,
                        size: g.size,
                    },
                    processes: cis.iter().map(|m| m.3).sum(),
                    compute_instances: cis
                        .into_iter()
                        .map(|m| ComputeInstance {
                            id: m.1,
                            mig_uuid: m.2.clone(),
                            processes: m.3,
                        })
                        .collect(),
                }
            })
            .collect();
        // GI ids are stable for an instance's life; listing by id keeps output stable.
        out.sort_by_key(|g| g.id);
        Ok(out)
    }
}
