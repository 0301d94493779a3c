//! NVML's failures in migrun's terms: nvml-wrapper's error as one of migrun's codes, and as a one-line [`GpuError`] that says what to do; it must not call NVML beyond opening a device.

use super::super::{Code, GpuError};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// The device handle of GPU `gpu`.
pub(super) fn device(nvml: &Nvml, gpu: u32) -> Result<Device<'_>, GpuError> {
    nvml.device_by_index(gpu)
        .map_err(|e| nvml_err("opening the GPU", gpu, e))
}

/// nvml-wrapper's error as one of migrun's NVML codes.
pub(super) fn code_of(e: &NvmlError) -> Code {
    match e {
        NvmlError::Uninitialized => Code::Uninitialized,
        NvmlError::InvalidArg => Code::InvalidArgument,
        NvmlError::NotSupported => Code::NotSupported,
        NvmlError::NoPermission => Code::NoPermission,
        NvmlError::NotFound => Code::NotFound,
        NvmlError::InsufficientSize(_) => Code::InsufficientSize,
        NvmlError::InUse => Code::InUse,
        NvmlError::DriverNotLoaded => Code::DriverNotLoaded,
        NvmlError::GpuLost => Code::GpuLost,
        NvmlError::LibraryNotFound | NvmlError::LibloadingError(_) => Code::LibraryNotFound,
        NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_) => Code::FunctionNotFound,
        // nvml-wrapper has no variant for INSUFFICIENT_RESOURCES (23) and newer codes: they arrive raw.
        NvmlError::UnexpectedVariant(v) => Code::from_nvml_value(*v),
        _ => Code::Unknown,
    }
}

/// A failed NVML call as a [`GpuError`]: NO_PERMISSION says what needs root, anything else keeps its code.
pub(super) fn nvml_err(op: &str, gpu: u32, e: NvmlError) -> GpuError {
    let code = code_of(&e);
    if code == Code::NoPermission {
        return GpuError::NoPermission {
            op: format!("{op} on GPU {gpu}"),
        };
    }
    let detail = match code {
        Code::InsufficientResources => {
            "the placement overlaps an existing instance or the profile's instance limit is reached; see `migrun status`".to_string()
        }
        Code::InUse => {
            "compute instances or processes still use it; stop them (or destroy its compute instances) first".to_string()
        }
        Code::FunctionNotFound => format!(
            "{}; the NVIDIA driver is too old for MIG management, update it",
            one_line(&e.to_string())
        ),
        Code::Unknown => one_line(&e.to_string()),
        _ => String::new(),
    };
    GpuError::Nvml {
        op: op.to_string(),
        gpu,
        code,
        detail,
    }
}

/// Error messages from libraries may hold newlines; migrun's errors are one line.
pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
