//! The NVML backend: the only user of nvml-wrapper, and the only home of `unsafe`; it must not leak raw handles out.

use super::{Backend, ComputeInstance, GiProfile, GpuError, GpuInfo, GpuInstance, MigMode};
use nvml_wrapper::Nvml;
use std::path::PathBuf;

/// Library loaded when MIGRUN_NVML_LIB is not set.
pub const DEFAULT_NVML_LIB: &str = "libnvidia-ml.so.1";

/// The driver backend.
pub struct NvmlBackend {
    nvml: Nvml,
}

impl NvmlBackend {
    /// Load `MIGRUN_NVML_LIB` or `libnvidia-ml.so.1`.
    pub fn open_default() -> Result<NvmlBackend, GpuError> {
        let lib = std::env::var_os("MIGRUN_NVML_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NVML_LIB));
        Self::open(lib)
    }

    pub fn open(lib: PathBuf) -> Result<NvmlBackend, GpuError> {
        let nvml = Nvml::builder()
            .lib_path(lib.as_os_str())
            .init()
            .map_err(|e| GpuError::NoDriver {
                lib: lib.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(NvmlBackend { nvml })
    }

    fn todo(&self, op: &str) -> GpuError {
        let _ = &self.nvml;
        GpuError::Sim(format!("NVML {op} is not implemented yet"))
    }
}

impl Backend for NvmlBackend {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        Err(self.todo("gpus"))
    }
    fn profiles(&mut self, _gpu: u32) -> Result<Vec<GiProfile>, GpuError> {
        Err(self.todo("profiles"))
    }
    fn instances(&mut self, _gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        Err(self.todo("instances"))
    }
    fn create_gi(&mut self, _gpu: u32, _profile_id: u32, _start: u32) -> Result<u32, GpuError> {
        Err(self.todo("create_gi"))
    }
    fn create_default_ci(&mut self, _gpu: u32, _gi: u32) -> Result<ComputeInstance, GpuError> {
        Err(self.todo("create_default_ci"))
    }
    fn destroy_ci(&mut self, _gpu: u32, _gi: u32, _ci: u32) -> Result<(), GpuError> {
        Err(self.todo("destroy_ci"))
    }
    fn destroy_gi(&mut self, _gpu: u32, _gi: u32) -> Result<(), GpuError> {
        Err(self.todo("destroy_gi"))
    }
    fn set_mig_mode(&mut self, _gpu: u32, _enable: bool) -> Result<MigMode, GpuError> {
        Err(self.todo("set_mig_mode"))
    }
    fn gpu_processes(&mut self, _gpu: u32) -> Result<u32, GpuError> {
        Err(self.todo("gpu_processes"))
    }
}
