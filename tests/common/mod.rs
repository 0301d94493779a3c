//! Helpers shared by the integration tests (`mod common;`): real container engines and the fake NVML library.
pub mod engines;
pub mod fake_nvml;
