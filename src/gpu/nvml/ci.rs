//! Compute instances of an existing GPU instance through NVML: its CI profiles with placements and remaining capacity, creating one at a placement, naming a new one by its MIG-device UUID; it must not decide where a compute instance goes.
//!
//! NVML reports compute-instance profiles only for a GPU instance that exists, by
//! NVML_COMPUTE_INSTANCE_PROFILE_* index; the index REV1 (7) repeats one slice on newer drivers,
//! so profiles are kept once per device-reported ID.

use super::errors::{device, nvml_err};
use super::{ffi, NvmlBackend};
use crate::gpu::{CiPlacement, CiProfile, Code, ComputeInstance, GpuError, Placement};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::NVML_COMPUTE_INSTANCE_PROFILE_COUNT;

impl NvmlBackend {
    /// The CI profiles GI `gi` offers (see [`crate::gpu::Backend::ci_profiles`]).
    pub(super) fn read_ci_profiles(
        &mut self,
        gpu: u32,
        gi: u32,
    ) -> Result<Vec<CiProfile>, GpuError> {
        let op = "reading compute instance profiles";
        self.ensure(gpu)?;
        let dev = device(&self.nvml, gpu)?;
        let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
        let mut out: Vec<CiProfile> = Vec::new();
        for index in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            let info = match handle.ci_profile_info(index) {
                Ok(info) => info,
                // This GI does not offer the index (or the driver does not know it).
                Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(nvml_err(op, gpu, e)),
            };
            if out.iter().any(|p| p.id == info.id) {
                continue;
            }
            let placements = match handle.ci_possible_placements(info.id) {
                Ok(p) => p,
                Err(e) => return Err(nvml_err("reading compute instance placements", gpu, e)),
            };
            let remaining = handle
                .ci_remaining_capacity(info.id)
                .map_err(|e| nvml_err("reading remaining compute instance capacity", gpu, e))?;
            out.push(CiProfile {
                nvml_index: index,
                id: info.id,
                slice_count: info.slice_count,
                instance_count: info.instance_count,
                placements: placements
                    .into_iter()
                    .map(|(start, size)| Placement { start, size })
                    .collect(),
                remaining,
            });
        }
        Ok(out)
    }

    /// Where each compute instance of GI `gi` sits: the MIG devices name its compute instances, NVML's
    /// compute-instance info gives each one's profile and placement.
    pub(super) fn read_ci_placements(
        &mut self,
        gpu: u32,
        gi: u32,
    ) -> Result<Vec<CiPlacement>, GpuError> {
        let op = "listing compute instances";
        let mut ids: Vec<u32> = self
            .mig_devices(gpu)?
            .into_iter()
            .filter(|(g, _, _, _)| *g == gi)
            .map(|(_, c, _, _)| c)
            .collect();
        ids.sort();
        let dev = device(&self.nvml, gpu)?;
        let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
        let mut out = Vec::new();
        for id in ids {
            let ci = handle.ci_by_id(id).map_err(|e| nvml_err(op, gpu, e))?;
            let (ci, profile_id, start, size) = ci.info().map_err(|e| nvml_err(op, gpu, e))?;
            out.push(CiPlacement {
                ci,
                profile_id,
                placement: Placement { start, size },
            });
        }
        Ok(out)
    }

    /// Create a compute instance of CI profile `profile_id` at compute slice `start` of GI `gi`.
    pub(super) fn create_ci_at(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, GpuError> {
        let op = "creating a compute instance";
        let profiles = self.read_ci_profiles(gpu, gi)?;
        let bad = |detail: String| GpuError::Nvml {
            op: op.into(),
            gpu,
            code: Code::InvalidArgument,
            detail,
        };
        let Some(profile) = profiles.iter().find(|p| p.id == profile_id) else {
            return Err(bad(format!(
                "GPU instance {gi} has no compute instance profile with ID {profile_id}; see `migrun profiles --ci --gpu {gpu}`"
            )));
        };
        let Some(placement) = profile.placements.iter().find(|p| p.start == start) else {
            let starts: Vec<String> = profile.placements.iter().map(|p| p.to_string()).collect();
            return Err(bad(format!(
                "compute instance profile {profile_id} cannot start at compute slice {start} of GPU instance {gi}; its placements are {}",
                starts.join(", ")
            )));
        };
        let ci_id = {
            let dev = device(&self.nvml, gpu)?;
            let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
            let ci = handle
                .create_ci_at(profile_id, placement.start, placement.size)
                .map_err(|e| match e {
                    NvmlError::UnexpectedVariant(23) => GpuError::Nvml {
                        op: op.into(),
                        gpu,
                        code: Code::InsufficientResources,
                        detail: format!(
                            "compute slices {placement} of GPU instance {gi} are taken, or its {} compute instances of profile {profile_id} exist",
                            profile.instance_count
                        ),
                    },
                    e => nvml_err(op, gpu, e),
                })?;
            match ci.id() {
                Ok(id) => id,
                Err(e) => {
                    // An unnamed compute instance would block destroying its GI forever: undo it.
                    let _ = ci.destroy();
                    return Err(nvml_err("reading the new compute instance", gpu, e));
                }
            }
        };
        self.name_new_ci(op, gpu, gi, ci_id)
    }

    /// The new compute instance `ci_id` of GI `gi` with its MIG-device UUID; one that NVML lists no
    /// MIG device for is useless and blocks its GI, so it is destroyed and the creation fails.
    pub(super) fn name_new_ci(
        &mut self,
        op: &str,
        gpu: u32,
        gi: u32,
        ci_id: u32,
    ) -> Result<ComputeInstance, GpuError> {
        let found = self.mig_devices(gpu).map(|devs| {
            devs.into_iter()
                .find(|(g, c, _, _)| *g == gi && *c == ci_id)
                .map(|(_, _, uuid, procs)| (uuid, procs))
        });
        match found {
            Ok(Some((mig_uuid, processes))) => Ok(ComputeInstance {
                id: ci_id,
                mig_uuid,
                processes,
            }),
            other => {
                let _ = crate::gpu::Backend::destroy_ci(self, gpu, gi, ci_id);
                match other {
                    Err(e) => Err(e),
                    _ => Err(GpuError::Nvml {
                        op: op.into(),
                        gpu,
                        code: Code::NotFound,
                        detail: format!(
                            "NVML lists no MIG device for GPU instance {gi} compute instance {ci_id}"
                        ),
                    }),
                }
            }
        }
    }
}
