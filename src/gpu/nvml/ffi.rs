//! Every `unsafe` block of migrun: safe wrappers over the raw NVML MIG calls that nvml-wrapper's safe API lacks; it must hold no policy and let no raw handle out of `gpu::nvml`.
//!
//! nvml-wrapper 0.13 has no GPU-instance / compute-instance create, destroy, list or info calls, no
//! `...ProfileInfoV` (the only way to read a profile's name), no remaining capacity, and its
//! `possible_placements()` always returns an empty Vec (it never sets the Vec's length). Those
//! calls go through the raw `NvmlLib` of nvml-wrapper-sys here. Symbols are looked up with
//! `nvml_sym` (a missing symbol is an error, never a panic) and return codes go through `nvml_try`.
//!
//! Handles: a [`Gi`] / [`Ci`] wraps an NVML handle and borrows the `Nvml` it came from, so it can
//! never outlive `nvmlShutdown`; `destroy` consumes it, so a destroyed handle cannot be used again.
#![allow(unsafe_code)]

use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlComputeInstanceInfo_t, nvmlComputeInstancePlacement_t, nvmlComputeInstanceProfileInfo_t,
    nvmlComputeInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_v2_t, nvmlGpuInstance_t,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
};
use std::ffi::{c_uint, CStr};
use std::mem;
use std::ptr;

/// `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)` from nvml.h: the struct size with the version in the top byte.
const PROFILE_INFO_V2: c_uint =
    mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as c_uint | (2 << 24);

/// A first guess at how many placements a profile has; real GPUs have at most 12 memory slices.
const PLACEMENT_GUESS: usize = 16;

/// nvmlGpuInstanceProfileInfo_v2_t in Rust types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProfileInfo {
    pub id: u32,
    pub p2p: bool,
    pub slice_count: u32,
    pub instance_count: u32,
    pub sm: u32,
    pub ce: u32,
    pub dec: u32,
    pub enc: u32,
    pub jpeg: u32,
    pub ofa: u32,
    pub memory_mib: u64,
    pub name: String,
}

/// nvmlGpuInstanceInfo_t without the device handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GiInfo {
    pub id: u32,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
}

/// The parts of nvmlComputeInstanceProfileInfo_t migrun uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CiProfileInfo {
    pub id: u32,
    pub slice_count: u32,
    pub instance_count: u32,
}

/// The raw handle of a safe `Device`.
fn raw(dev: &Device<'_>) -> nvml_wrapper_sys::bindings::nvmlDevice_t {
    // SAFETY: `handle()` only copies the pointer out; it stays owned by `dev`'s Nvml, which every
    // caller here borrows for at least as long as the call that uses it.
    unsafe { dev.handle() }
}

/// nvmlDeviceGetGpuInstanceProfileInfoV for one NVML_GPU_INSTANCE_PROFILE_* index.
pub(super) fn gi_profile_info(dev: &Device<'_>, index: u32) -> Result<ProfileInfo, NvmlError> {
    let sym = nvml_sym(
        dev.nvml()
            .lib()
            .nvmlDeviceGetGpuInstanceProfileInfoV
            .as_ref(),
    )?;
    // SAFETY: the struct is plain C data for which all-zero is valid; NVML writes at most
    // `version`'s size into it, and `version` is exactly the size of the struct we pass.
    let info = unsafe {
        let mut info: nvmlGpuInstanceProfileInfo_v2_t = mem::zeroed();
        info.version = PROFILE_INFO_V2;
        nvml_try(sym(raw(dev), index, &mut info))?;
        info
    };
    // The name is a fixed 96-byte array; a driver that forgot the NUL must not make us read past it.
    let bytes: Vec<u8> = info.name.iter().map(|&c| c as u8).collect();
    let name = CStr::from_bytes_until_nul(&bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    Ok(ProfileInfo {
        id: info.id,
        p2p: info.isP2pSupported != 0,
        slice_count: info.sliceCount,
        instance_count: info.instanceCount,
        sm: info.multiprocessorCount,
        ce: info.copyEngineCount,
        dec: info.decoderCount,
        enc: info.encoderCount,
        jpeg: info.jpegCount,
        ofa: info.ofaCount,
        memory_mib: info.memorySizeMB,
        name,
    })
}

/// nvmlDeviceGetGpuInstancePossiblePlacements_v2, as `(start, size)` in memory slices.
pub(super) fn gi_possible_placements(
    dev: &Device<'_>,
    profile_id: u32,
) -> Result<Vec<(u32, u32)>, NvmlError> {
    let sym = nvml_sym(
        dev.nvml()
            .lib()
            .nvmlDeviceGetGpuInstancePossiblePlacements_v2
            .as_ref(),
    )?;
    let empty = nvmlGpuInstancePlacement_t { start: 0, size: 0 };
    let mut buf = vec![empty; PLACEMENT_GUESS];
    // One call with a buffer big enough for any real GPU; a larger answer is retried once at the size NVML asks for.
    for _ in 0..2 {
        let mut count = buf.len() as c_uint;
        // SAFETY: `buf` holds `count` initialised elements and NVML writes at most `count` of them;
        // `count` is a valid out-pointer for the call's duration.
        let rc = unsafe { sym(raw(dev), profile_id, buf.as_mut_ptr(), &mut count) };
        if rc == nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE && count as usize > buf.len() {
            buf = vec![empty; count as usize];
            continue;
        }
        nvml_try(rc)?;
        buf.truncate((count as usize).min(buf.len()));
        return Ok(buf.iter().map(|p| (p.start, p.size)).collect());
    }
    Err(NvmlError::InsufficientSize(Some(buf.len())))
}

/// nvmlDeviceGetGpuInstanceRemainingCapacity.
pub(super) fn gi_remaining_capacity(dev: &Device<'_>, profile_id: u32) -> Result<u32, NvmlError> {
    let sym = nvml_sym(
        dev.nvml()
            .lib()
            .nvmlDeviceGetGpuInstanceRemainingCapacity
            .as_ref(),
    )?;
    let mut count: c_uint = 0;
    // SAFETY: `count` is a valid out-pointer for the call's duration.
    unsafe { nvml_try(sym(raw(dev), profile_id, &mut count))? };
    Ok(count)
}

/// nvmlDeviceCreateGpuInstanceWithPlacement.
pub(super) fn create_gi<'n>(
    dev: &Device<'n>,
    profile_id: u32,
    start: u32,
    size: u32,
) -> Result<Gi<'n>, NvmlError> {
    let nvml = dev.nvml();
    let sym = nvml_sym(nvml.lib().nvmlDeviceCreateGpuInstanceWithPlacement.as_ref())?;
    let placement = nvmlGpuInstancePlacement_t { start, size };
    let mut handle: nvmlGpuInstance_t = ptr::null_mut();
    // SAFETY: `placement` is read-only input and `handle` a valid out-pointer, both live for the call.
    unsafe { nvml_try(sym(raw(dev), profile_id, &placement, &mut handle))? };
    Ok(Gi { handle, nvml })
}

/// nvmlDeviceGetGpuInstances for one profile; `capacity` is the profile's instance count, the
/// buffer size nvml.h asks for.
pub(super) fn gpu_instances<'n>(
    dev: &Device<'n>,
    profile_id: u32,
    capacity: u32,
) -> Result<Vec<Gi<'n>>, NvmlError> {
    let nvml = dev.nvml();
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetGpuInstances.as_ref())?;
    let mut buf: Vec<nvmlGpuInstance_t> = vec![ptr::null_mut(); capacity.max(1) as usize];
    let mut count = buf.len() as c_uint;
    // SAFETY: `buf` holds `count` elements and NVML writes at most that many handles; `count` is a
    // valid in/out pointer for the call's duration.
    unsafe { nvml_try(sym(raw(dev), profile_id, buf.as_mut_ptr(), &mut count))? };
    buf.truncate((count as usize).min(buf.len()));
    Ok(buf
        .into_iter()
        .filter(|h| !h.is_null())
        .map(|handle| Gi { handle, nvml })
        .collect())
}

/// nvmlDeviceGetGpuInstanceById.
pub(super) fn gpu_instance_by_id<'n>(dev: &Device<'n>, id: u32) -> Result<Gi<'n>, NvmlError> {
    let nvml = dev.nvml();
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetGpuInstanceById.as_ref())?;
    let mut handle: nvmlGpuInstance_t = ptr::null_mut();
    // SAFETY: `handle` is a valid out-pointer for the call's duration.
    unsafe { nvml_try(sym(raw(dev), id, &mut handle))? };
    Ok(Gi { handle, nvml })
}

/// nvmlDeviceGetGpuInstanceId of a MIG device handle.
pub(super) fn mig_gpu_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    let sym = nvml_sym(mig.nvml().lib().nvmlDeviceGetGpuInstanceId.as_ref())?;
    let mut id: c_uint = 0;
    // SAFETY: `id` is a valid out-pointer for the call's duration.
    unsafe { nvml_try(sym(raw(mig), &mut id))? };
    Ok(id)
}

/// nvmlDeviceGetComputeInstanceId of a MIG device handle.
pub(super) fn mig_compute_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    let sym = nvml_sym(mig.nvml().lib().nvmlDeviceGetComputeInstanceId.as_ref())?;
    let mut id: c_uint = 0;
    // SAFETY: `id` is a valid out-pointer for the call's duration.
    unsafe { nvml_try(sym(raw(mig), &mut id))? };
    Ok(id)
}

/// A GPU instance handle, valid while the `Nvml` it borrows is alive and the instance exists.
pub(super) struct Gi<'n> {
    handle: nvmlGpuInstance_t,
    nvml: &'n Nvml,
}

impl<'n> Gi<'n> {
    /// nvmlGpuInstanceGetInfo.
    pub fn info(&self) -> Result<GiInfo, NvmlError> {
        let sym = nvml_sym(self.nvml.lib().nvmlGpuInstanceGetInfo.as_ref())?;
        // SAFETY: all-zero is a valid value of this plain C struct (its pointer field becomes
        // NULL); NVML fills it through the valid out-pointer.
        let info = unsafe {
            let mut info: nvmlGpuInstanceInfo_t = mem::zeroed();
            nvml_try(sym(self.handle, &mut info))?;
            info
        };
        Ok(GiInfo {
            id: info.id,
            profile_id: info.profileId,
            start: info.placement.start,
            size: info.placement.size,
        })
    }

    /// nvmlGpuInstanceGetComputeInstanceProfileInfo for a CI profile index, shared engines.
    pub fn ci_profile_info(&self, index: u32) -> Result<CiProfileInfo, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceGetComputeInstanceProfileInfo
                .as_ref(),
        )?;
        // SAFETY: all-zero is a valid value of this plain C struct; NVML fills it through the
        // valid out-pointer.
        let info = unsafe {
            let mut info: nvmlComputeInstanceProfileInfo_t = mem::zeroed();
            nvml_try(sym(
                self.handle,
                index,
                NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                &mut info,
            ))?;
            info
        };
        Ok(CiProfileInfo {
            id: info.id,
            slice_count: info.sliceCount,
            instance_count: info.instanceCount,
        })
    }

    /// nvmlGpuInstanceGetComputeInstancePossiblePlacements, as `(start, size)` in the GI's compute slices.
    pub fn ci_possible_placements(&self, ci_profile_id: u32) -> Result<Vec<(u32, u32)>, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceGetComputeInstancePossiblePlacements
                .as_ref(),
        )?;
        let empty = nvmlComputeInstancePlacement_t { start: 0, size: 0 };
        let mut buf = vec![empty; PLACEMENT_GUESS];
        let mut count = buf.len() as c_uint;
        // SAFETY: `buf` holds `count` initialised elements and `count` is a valid in/out pointer;
        // NVML writes at most `count` placements and sets `count` to how many it wrote (or needs).
        let rc = unsafe { sym(self.handle, ci_profile_id, buf.as_mut_ptr(), &mut count) };
        if rc == nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE {
            buf = vec![empty; count as usize];
            // SAFETY: as above, with the buffer grown to the count NVML asked for.
            unsafe {
                nvml_try(sym(
                    self.handle,
                    ci_profile_id,
                    buf.as_mut_ptr(),
                    &mut count,
                ))?
            };
        } else {
            nvml_try(rc)?;
        }
        buf.truncate((count as usize).min(buf.len()));
        Ok(buf.iter().map(|p| (p.start, p.size)).collect())
    }

    /// nvmlGpuInstanceGetComputeInstanceRemainingCapacity.
    pub fn ci_remaining_capacity(&self, ci_profile_id: u32) -> Result<u32, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceGetComputeInstanceRemainingCapacity
                .as_ref(),
        )?;
        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid out-pointer for the call's duration.
        unsafe { nvml_try(sym(self.handle, ci_profile_id, &mut count))? };
        Ok(count)
    }

    /// nvmlGpuInstanceCreateComputeInstanceWithPlacement (`start`, `size` in the GI's compute slices).
    pub fn create_ci_at(
        &self,
        ci_profile_id: u32,
        start: u32,
        size: u32,
    ) -> Result<Ci<'n>, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceCreateComputeInstanceWithPlacement
                .as_ref(),
        )?;
        let placement = nvmlComputeInstancePlacement_t { start, size };
        let mut handle: nvmlComputeInstance_t = ptr::null_mut();
        // SAFETY: `placement` is a valid in-pointer and `handle` a valid out-pointer for the call's duration.
        unsafe { nvml_try(sym(self.handle, ci_profile_id, &placement, &mut handle))? };
        Ok(Ci {
            handle,
            nvml: self.nvml,
        })
    }

    /// nvmlGpuInstanceCreateComputeInstance.
    pub fn create_ci(&self, ci_profile_id: u32) -> Result<Ci<'n>, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceCreateComputeInstance
                .as_ref(),
        )?;
        let mut handle: nvmlComputeInstance_t = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer for the call's duration.
        unsafe { nvml_try(sym(self.handle, ci_profile_id, &mut handle))? };
        Ok(Ci {
            handle,
            nvml: self.nvml,
        })
    }

    /// nvmlGpuInstanceGetComputeInstanceById.
    pub fn ci_by_id(&self, id: u32) -> Result<Ci<'n>, NvmlError> {
        let sym = nvml_sym(
            self.nvml
                .lib()
                .nvmlGpuInstanceGetComputeInstanceById
                .as_ref(),
        )?;
        let mut handle: nvmlComputeInstance_t = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer for the call's duration.
        unsafe { nvml_try(sym(self.handle, id, &mut handle))? };
        Ok(Ci {
            handle,
            nvml: self.nvml,
        })
    }

    /// nvmlGpuInstanceDestroy (IN_USE while compute instances or processes remain).
    pub fn destroy(self) -> Result<(), NvmlError> {
        let sym = nvml_sym(self.nvml.lib().nvmlGpuInstanceDestroy.as_ref())?;
        // SAFETY: the handle came from NVML for this session and `self` is consumed, so it is not
        // used again after the instance is gone.
        unsafe { nvml_try(sym(self.handle)) }
    }
}

/// A compute instance handle, valid while the `Nvml` it borrows is alive and the instance exists.
pub(super) struct Ci<'n> {
    handle: nvmlComputeInstance_t,
    nvml: &'n Nvml,
}

impl Ci<'_> {
    /// The compute instance ID (nvmlComputeInstanceGetInfo_v2).
    pub fn id(&self) -> Result<u32, NvmlError> {
        self.info().map(|(id, _, _, _)| id)
    }

    /// (id, profile ID, placement start, placement size) from nvmlComputeInstanceGetInfo_v2.
    pub fn info(&self) -> Result<(u32, u32, u32, u32), NvmlError> {
        let sym = nvml_sym(self.nvml.lib().nvmlComputeInstanceGetInfo_v2.as_ref())?;
        // SAFETY: all-zero is a valid value of this plain C struct (its handle fields become
        // NULL); NVML fills it through the valid out-pointer.
        let info = unsafe {
            let mut info: nvmlComputeInstanceInfo_t = mem::zeroed();
            nvml_try(sym(self.handle, &mut info))?;
            info
        };
        Ok((
            info.id,
            info.profileId,
            info.placement.start,
            info.placement.size,
        ))
    }

    /// nvmlComputeInstanceDestroy (IN_USE while processes run on it).
    pub fn destroy(self) -> Result<(), NvmlError> {
        let sym = nvml_sym(self.nvml.lib().nvmlComputeInstanceDestroy.as_ref())?;
        // SAFETY: the handle came from NVML for this session and `self` is consumed, so it is not
        // used again after the instance is gone.
        unsafe { nvml_try(sym(self.handle)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_info_version_matches_nvml_h() {
        // nvml.h: sizeof(nvmlGpuInstanceProfileInfo_v2_t) is 10 uints, padding, a u64 and a 96-byte name.
        assert_eq!(mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 152);
        assert_eq!(PROFILE_INFO_V2, 152 | (2 << 24));
    }
}
