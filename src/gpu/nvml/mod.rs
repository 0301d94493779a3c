//! The NVML backend: the only user of nvml-wrapper (with [`ffi`], the only home of `unsafe`); it must not leak raw handles out or decide placements.
//!
//! One `NvmlBackend` is one NVML session: `nvmlInit` once, then every trait call reuses it, so a
//! snapshot on every allocation costs only the queries themselves. What cannot change while the
//! driver is loaded (GPU count, UUIDs, names, memory, each GPU's profile table and placements) is
//! read once per session; what can (MIG mode, remaining capacity, instances, processes) is read on
//! every call (the allocator's snapshot derives remaining capacity from the instances instead).
//!
//! NVML return codes become [`GpuError`]s that name the GPU and the next step: NO_PERMISSION ->
//! [`GpuError::NoPermission`], NOT_SUPPORTED on create with MIG off -> [`GpuError::MigDisabled`],
//! a GPU whose MIG mode query answers NOT_SUPPORTED -> [`GpuError::NotMigCapable`].
#![deny(unsafe_code)]

mod assemble;
mod ci;
mod errors;
mod ffi;
use errors::{device, nvml_err, one_line};

use super::hostfacts::{self, HostFacts, HostFactsError};
use super::rules::{self, Occupant};
use super::{
    Backend, CiPlacement, CiProfile, Code, ComputeInstance, GiProfile, GpuError, GpuInfo,
    GpuInstance, MigMode, Placement,
};
use crate::statedir::StateDir;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_PROFILE_COUNT, NVML_GPU_INSTANCE_PROFILE_COUNT,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Library loaded when MIGRUN_NVML_LIB is not set.
pub const DEFAULT_NVML_LIB: &str = "libnvidia-ml.so.1";

/// nvml.h's NVML_VALUE_NOT_AVAILABLE for unsigned fields: the value is unknown (the fake library
/// reports simulated models' unknown engine counts this way).
const VALUE_NOT_AVAILABLE: u32 = u32::MAX;

/// Profile indices probed past NVML_GPU_INSTANCE_PROFILE_COUNT, so a newer driver's extra profiles
/// are still seen; probing stops at the first INVALID_ARGUMENT there (the end of the driver's table).
const MAX_PROFILE_INDEX: u32 = 32;

/// Compute-slice count of each NVML_COMPUTE_INSTANCE_PROFILE_* index (nvml.h), used to try the
/// full-GI compute profile first; the answer is still checked against what the GI reports.
const CI_PROFILE_SLICES: [u32; 8] = [1, 2, 3, 4, 7, 8, 6, 1];

/// What stays fixed about a GPU while NVML is loaded.
struct GpuCache {
    uuid: String,
    name: String,
    memory_mib: u64,
    /// The profile table with placements; `remaining` is refreshed on every `profiles()` call.
    profiles: Option<Vec<GiProfile>>,
}

/// The driver backend.
pub struct NvmlBackend {
    nvml: Nvml,
    count: Option<u32>,
    cache: Vec<Option<GpuCache>>,
    /// Where profile tables are kept between processes (see [`NvmlBackend::keep_tables_in`]).
    tables: Option<StateDir>,
    /// The driver version, read once (the key of the kept tables).
    driver: Option<String>,
}

/// A GPU's profile table as kept in the state dir, valid for one driver version.
#[derive(Serialize, Deserialize)]
struct KeptTable {
    driver: String,
    uuid: String,
    profiles: Vec<GiProfile>,
}

impl NvmlBackend {
    /// Load `MIGRUN_NVML_LIB` or `libnvidia-ml.so.1`.
    pub fn open_default() -> Result<NvmlBackend, GpuError> {
        let lib = std::env::var_os("MIGRUN_NVML_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NVML_LIB));
        Self::open(lib)
    }

    /// Load the NVML library at `lib` and initialise it. Fails fast (no retries, no waiting) with
    /// [`GpuError::NoDriver`] when the library is missing, is not NVML, or the driver is not loaded.
    pub fn open(lib: PathBuf) -> Result<NvmlBackend, GpuError> {
        let nvml = Nvml::builder()
            .lib_path(lib.as_os_str())
            .init()
            .map_err(|e| GpuError::NoDriver {
                lib: lib.display().to_string(),
                reason: one_line(&e.to_string()),
            })?;
        Ok(NvmlBackend {
            nvml,
            count: None,
            cache: Vec::new(),
            tables: None,
            driver: None,
        })
    }

    /// Keep each GPU's profile table in `dir` between processes. Probing the table is one
    /// `nvmlDeviceGetGpuInstanceProfileInfo` per NVML profile index (0.5 ms each on the lent H100: about
    /// 9 ms per GPU), and every hook and allocation is a new process. The table cannot change while the same
    /// driver runs the same GPU, so a kept table is used only when its GPU UUID and driver version match; any
    /// doubt (unreadable, malformed, another driver) means probing again. Writing is best effort: a caller
    /// without a writable state dir just probes.
    pub fn keep_tables_in(&mut self, dir: StateDir) {
        self.tables = Some(dir);
    }

    fn driver_version(&mut self) -> Option<String> {
        if self.driver.is_none() {
            self.driver = self.nvml.sys_driver_version().ok();
        }
        self.driver.clone()
    }

    /// Where GPU `gpu`'s table is kept and what identifies it: (`nvml-profiles-<GPU UUID>.json`, UUID, driver
    /// version). `None` when tables are not kept, the driver version is unknown, or the UUID is not a plain file
    /// name.
    fn kept_key(&mut self, gpu: u32) -> Option<(String, String, String)> {
        self.tables.as_ref()?;
        let uuid = self.cached(gpu).uuid.clone();
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        let driver = self.driver_version()?;
        Some((format!("nvml-profiles-{uuid}.json"), uuid, driver))
    }

    fn kept_table(&mut self, gpu: u32) -> Option<Vec<GiProfile>> {
        let (name, uuid, driver) = self.kept_key(gpu)?;
        let bytes = self.tables.as_ref()?.read(&name).ok()??;
        let kept: KeptTable = serde_json::from_slice(&bytes).ok()?;
        (kept.driver == driver && kept.uuid == uuid && !kept.profiles.is_empty())
            .then_some(kept.profiles)
    }

    fn keep_table(&mut self, gpu: u32, profiles: &[GiProfile]) {
        let (Some((name, uuid, driver)), Some(dir)) = (self.kept_key(gpu), self.tables.as_ref())
        else {
            return;
        };
        let kept = KeptTable {
            driver,
            uuid,
            profiles: profiles.to_vec(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&kept) {
            if let Err(e) = dir.write(&name, &json) {
                tracing::debug!("cannot keep the profile table of GPU {gpu}: {e}");
            }
        }
    }

    /// The number of GPUs, read once.
    fn count(&mut self) -> Result<u32, GpuError> {
        if let Some(c) = self.count {
            return Ok(c);
        }
        let c = self
            .nvml
            .device_count()
            .map_err(|e| nvml_err("counting GPUs", 0, e))?;
        self.count = Some(c);
        self.cache = (0..c).map(|_| None).collect();
        Ok(c)
    }

    /// Check `gpu` exists and fill its fixed data.
    fn ensure(&mut self, gpu: u32) -> Result<(), GpuError> {
        let count = self.count()?;
        if gpu >= count {
            return Err(GpuError::NoSuchGpu { index: gpu, count });
        }
        if self.cache[gpu as usize].is_some() {
            return Ok(());
        }
        let dev = device(&self.nvml, gpu)?;
        let op = "reading the GPU's identity";
        let uuid = dev.uuid().map_err(|e| nvml_err(op, gpu, e))?;
        let name = dev.name().map_err(|e| nvml_err(op, gpu, e))?;
        let memory_mib = dev.memory_info().map_err(|e| nvml_err(op, gpu, e))?.total >> 20;
        self.cache[gpu as usize] = Some(GpuCache {
            uuid,
            name,
            memory_mib,
            profiles: None,
        });
        Ok(())
    }

    fn cached(&self, gpu: u32) -> &GpuCache {
        self.cache[gpu as usize]
            .as_ref()
            .expect("ensure() fills the cache before use")
    }

    /// `GPU 0 (GPU-…)`, how messages name a GPU.
    fn label(&self, gpu: u32) -> String {
        format!("GPU {gpu} ({})", self.cached(gpu).uuid)
    }

    /// The GPU's profile table (without live remaining capacity), read once.
    fn profile_table(&mut self, gpu: u32) -> Result<Vec<GiProfile>, GpuError> {
        self.ensure(gpu)?;
        if let Some(p) = &self.cached(gpu).profiles {
            return Ok(p.clone());
        }
        if let Some(table) = self.kept_table(gpu) {
            self.cache[gpu as usize]
                .as_mut()
                .expect("filled by ensure()")
                .profiles = Some(table.clone());
            return Ok(table);
        }
        let dev = device(&self.nvml, gpu)?;
        let op = "reading GPU instance profiles";
        let mut table = Vec::new();
        for index in 0..MAX_PROFILE_INDEX {
            let info = match ffi::gi_profile_info(&dev, index) {
                Ok(info) => info,
                // The GPU does not offer this profile (the real H100 answers so for 5, 6, 8, 10..=16).
                Err(NvmlError::NotSupported) => continue,
                Err(NvmlError::InvalidArg) if index >= NVML_GPU_INSTANCE_PROFILE_COUNT => break,
                Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(nvml_err(op, gpu, e)),
            };
            let placements = ffi::gi_possible_placements(&dev, info.id)
                .map_err(|e| nvml_err(op, gpu, e))?
                .into_iter()
                .map(|(start, size)| Placement { start, size })
                .collect();
            let known = |v: u32| (v != VALUE_NOT_AVAILABLE).then_some(v);
            table.push(GiProfile {
                nvml_index: index,
                id: info.id,
                name: info.name,
                slice_count: info.slice_count,
                instance_count: info.instance_count,
                memory_mib: info.memory_mib,
                p2p: info.p2p,
                sm: known(info.sm),
                ce: known(info.ce),
                dec: known(info.dec),
                enc: known(info.enc),
                jpeg: known(info.jpeg),
                ofa: known(info.ofa),
                placements,
                remaining: 0,
            });
        }
        if table.is_empty() {
            // No profile at all: tell a non-MIG GPU apart from an odd driver answer.
            if self.mig_mode(gpu)?.is_none() {
                return Err(self.not_mig_capable(gpu));
            }
            return Ok(table);
        }
        self.keep_table(gpu, &table);
        self.cache[gpu as usize]
            .as_mut()
            .expect("filled by ensure()")
            .profiles = Some(table.clone());
        Ok(table)
    }

    /// The MIG mode, or `None` when the GPU is not MIG-capable.
    fn mig_mode(&mut self, gpu: u32) -> Result<Option<MigMode>, GpuError> {
        let dev = device(&self.nvml, gpu)?;
        match dev.mig_mode() {
            Ok(m) => Ok(Some(MigMode {
                current: m.current != 0,
                pending: m.pending != 0,
            })),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(nvml_err("reading the MIG mode", gpu, e)),
        }
    }

    fn not_mig_capable(&self, gpu: u32) -> GpuError {
        GpuError::NotMigCapable {
            gpu: self.label(gpu),
            name: self.cached(gpu).name.clone(),
        }
    }

    /// Explain a NOT_SUPPORTED answer to a MIG operation: MIG disabled, a non-MIG GPU, or (with
    /// MIG on) the plain NVML error.
    fn explain_not_supported(&mut self, op: &str, gpu: u32, e: NvmlError) -> GpuError {
        match self.mig_mode(gpu) {
            Ok(None) => self.not_mig_capable(gpu),
            Ok(Some(m)) if !m.current => GpuError::MigDisabled {
                gpu: self.label(gpu),
                index: gpu,
            },
            _ => nvml_err(op, gpu, e),
        }
    }

    /// Every MIG device of the GPU as (GI id, CI id, MIG UUID, compute processes).
    fn mig_devices(&mut self, gpu: u32) -> Result<Vec<(u32, u32, String, u32)>, GpuError> {
        let op = "listing MIG devices";
        let dev = device(&self.nvml, gpu)?;
        let max = dev.mig_device_count().map_err(|e| nvml_err(op, gpu, e))?;
        let mut out = Vec::new();
        let mut parent_procs = None;
        for i in 0..max {
            let mig = match dev.mig_device_by_index(i) {
                Ok(m) => m,
                // Indices without a MIG device behind them (nvml.h: NOT_FOUND).
                Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(nvml_err(op, gpu, e)),
            };
            let ids = ffi::mig_gpu_instance_id(&mig)
                .and_then(|gi| Ok((gi, ffi::mig_compute_instance_id(&mig)?, mig.uuid()?)));
            let (gi, ci, uuid) = match ids {
                Ok(ids) => ids,
                // Destroyed since the handle was taken (a destroy runs outside migrun's lock, issue 23).
                Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(nvml_err(op, gpu, e)),
            };
            let procs = match mig.running_compute_processes_count() {
                Ok(n) => n,
                // A driver that cannot list per MIG device still lists the whole GPU, with each
                // process's GPU-instance id: count those, never assume an instance is idle.
                Err(NvmlError::NotSupported) => {
                    let all = match &parent_procs {
                        Some(all) => all,
                        None => parent_procs.insert(
                            dev.running_compute_processes()
                                .map_err(|e| nvml_err("listing compute processes", gpu, e))?,
                        ),
                    };
                    all.iter().filter(|p| p.gpu_instance_id == Some(gi)).count() as u32
                }
                Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(nvml_err("listing compute processes", gpu, e)),
            };
            out.push((gi, ci, uuid, procs));
        }
        Ok(out)
    }

    /// The full-GI compute-instance profile of a GPU instance (what `nvidia-smi mig -cci` without
    /// a profile creates): try the index whose slice count matches the GI, else take the largest.
    fn default_ci_profile(
        gi: &ffi::Gi<'_>,
        gi_slices: Option<u32>,
    ) -> Result<ffi::CiProfileInfo, NvmlError> {
        if let Some(slices) = gi_slices {
            if let Some(idx) = CI_PROFILE_SLICES.iter().position(|s| *s == slices) {
                match gi.ci_profile_info(idx as u32) {
                    Ok(p) if p.slice_count == slices => return Ok(p),
                    Ok(_) | Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut best: Option<ffi::CiProfileInfo> = None;
        for idx in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            match gi.ci_profile_info(idx) {
                Ok(p) if best.is_none_or(|b| p.slice_count > b.slice_count) => best = Some(p),
                Ok(_) | Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => {}
                Err(e) => return Err(e),
            }
        }
        best.ok_or(NvmlError::NotSupported)
    }
}

impl Backend for NvmlBackend {
    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Nvml
    }
    /// NVML does not report device minors or capability minors; the driver's /proc files do.
    fn host_facts(&mut self) -> Result<HostFacts, HostFactsError> {
        HostFacts::read_from(&hostfacts::host_root())
    }
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        let count = self.count()?;
        let mut out = Vec::with_capacity(count as usize);
        for gpu in 0..count {
            self.ensure(gpu)?;
            let mig = self.mig_mode(gpu)?;
            let c = self.cached(gpu);
            out.push(GpuInfo {
                index: gpu,
                uuid: c.uuid.clone(),
                name: c.name.clone(),
                memory_mib: c.memory_mib,
                mig,
            });
        }
        Ok(out)
    }

    fn profiles(&mut self, gpu: u32) -> Result<Vec<GiProfile>, GpuError> {
        let mut table = self.profile_table(gpu)?;
        let dev = device(&self.nvml, gpu)?;
        for p in &mut table {
            p.remaining = ffi::gi_remaining_capacity(&dev, p.id)
                .map_err(|e| nvml_err("reading remaining GPU instance capacity", gpu, e))?;
        }
        Ok(table)
    }

    /// The snapshot's profiles: the per-call form, minus NVML's remaining-capacity queries. On the lent H100
    /// `nvmlDeviceGetGpuInstanceRemainingCapacity` took about 0.2 ms per profile, in every allocation and hook;
    /// the snapshot computes the same number from the instances it has just read, with the placement rules the
    /// simulator and the placement policy share (`gpu::rules::fill_remaining`), so the snapshot reads as the
    /// driver would answer. `profiles()`, which `migrun profiles` prints, still asks NVML.
    fn snapshot_profiles(
        &mut self,
        gpu: u32,
        instances: &[GpuInstance],
    ) -> Result<Vec<GiProfile>, GpuError> {
        let mut profiles = self.profile_table(gpu)?;
        let occupants: Vec<Occupant> = instances.iter().map(Occupant::from).collect();
        rules::fill_remaining(&mut profiles, &occupants);
        Ok(profiles)
    }

    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        let op = "listing GPU instances";
        let table = self.profile_table(gpu)?;
        let mut gis = Vec::new();
        let mut mig_checked = false;
        for p in &table {
            let found = {
                let dev = device(&self.nvml, gpu)?;
                // A GI destroyed between the listing and its info (another process's destroy runs outside
                // migrun's lock, issue 23) answers NOT_FOUND or INVALID_ARGUMENT: it is gone, not an error.
                ffi::gpu_instances(&dev, p.id, p.instance_count).and_then(|found| {
                    found
                        .iter()
                        .filter_map(|gi| match gi.info() {
                            Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => None,
                            r => Some(r),
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            };
            match found {
                Ok(found) => gis.extend(found),
                // NOT_SUPPORTED: MIG is off (then no instance can exist, and the trait promises
                // an empty list), or with MIG on this one profile cannot be listed.
                Err(NvmlError::NotSupported) if !mig_checked => {
                    mig_checked = true;
                    if !self.mig_mode(gpu)?.is_some_and(|m| m.current) {
                        return Ok(Vec::new());
                    }
                }
                Err(NvmlError::NotSupported) => {}
                Err(e) => return Err(nvml_err(op, gpu, e)),
            }
        }
        self.assemble(gpu, gis)
    }

    fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, GpuError> {
        let op = "creating a GPU instance";
        let table = self.profile_table(gpu)?;
        let Some(profile) = table.iter().find(|p| p.id == profile_id) else {
            return Err(GpuError::Nvml {
                op: op.into(),
                gpu,
                code: Code::InvalidArgument,
                detail: format!(
                    "{} has no GPU instance profile with ID {profile_id}; see `migrun profiles --gpu {gpu}`",
                    self.label(gpu)
                ),
            });
        };
        let Some(placement) = profile.placements.iter().find(|p| p.start == start) else {
            let starts: Vec<String> = profile.placements.iter().map(|p| p.to_string()).collect();
            return Err(GpuError::Nvml {
                op: op.into(),
                gpu,
                code: Code::InvalidArgument,
                detail: format!(
                    "{} cannot start at memory slice {start}; its placements are {}",
                    profile.short_name(),
                    starts.join(", ")
                ),
            });
        };
        let failure = {
            let dev = device(&self.nvml, gpu)?;
            match ffi::create_gi(&dev, profile_id, placement.start, placement.size) {
                Ok(gi) => {
                    return match gi.info() {
                        Ok(info) => Ok(info.id),
                        Err(e) => {
                            // Without its id nobody could release this instance: undo it now.
                            let _ = gi.destroy();
                            Err(nvml_err("reading the new GPU instance", gpu, e))
                        }
                    };
                }
                Err(e) => e,
            }
        };
        match failure {
            NvmlError::NotSupported => Err(self.explain_not_supported(op, gpu, failure)),
            e => Err(nvml_err(op, gpu, e)),
        }
    }

    fn create_default_ci(&mut self, gpu: u32, gi: u32) -> Result<ComputeInstance, GpuError> {
        let op = "creating the default compute instance";
        let table = self.profile_table(gpu)?;
        let ci_id = {
            let dev = device(&self.nvml, gpu)?;
            let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
            let info = handle.info().map_err(|e| nvml_err(op, gpu, e))?;
            let slices = table
                .iter()
                .find(|p| p.id == info.profile_id)
                .map(|p| p.slice_count);
            let ci_profile =
                Self::default_ci_profile(&handle, slices).map_err(|e| nvml_err(op, gpu, e))?;
            let ci = handle.create_ci(ci_profile.id).map_err(|e| match e {
                // NVML's INSUFFICIENT_RESOURCES here means the GI has no compute slices left.
                NvmlError::UnexpectedVariant(23) => GpuError::Nvml {
                    op: op.into(),
                    gpu,
                    code: Code::InsufficientResources,
                    detail: format!("GPU instance {gi} has no free compute slices (it already holds a compute instance)"),
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

    fn ci_profiles(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiProfile>, GpuError> {
        self.read_ci_profiles(gpu, gi)
    }

    fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, GpuError> {
        self.create_ci_at(gpu, gi, profile_id, start)
    }

    fn ci_placements(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiPlacement>, GpuError> {
        self.read_ci_placements(gpu, gi)
    }

    fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), GpuError> {
        let op = "destroying a compute instance";
        self.ensure(gpu)?;
        let dev = device(&self.nvml, gpu)?;
        let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
        let ci = handle.ci_by_id(ci).map_err(|e| nvml_err(op, gpu, e))?;
        ci.destroy().map_err(|e| nvml_err(op, gpu, e))
    }

    fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), GpuError> {
        let op = "destroying a GPU instance";
        self.ensure(gpu)?;
        let dev = device(&self.nvml, gpu)?;
        let handle = ffi::gpu_instance_by_id(&dev, gi).map_err(|e| nvml_err(op, gpu, e))?;
        handle.destroy().map_err(|e| nvml_err(op, gpu, e))
    }

    fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<MigMode, GpuError> {
        let op = "setting MIG mode";
        self.ensure(gpu)?;
        let res = device(&self.nvml, gpu)?.set_mig_mode(enable);
        match res {
            Ok(_) => {}
            Err(NvmlError::NotSupported) => return Err(self.not_mig_capable(gpu)),
            Err(e) => return Err(nvml_err(op, gpu, e)),
        }
        self.mig_mode(gpu)?.ok_or_else(|| self.not_mig_capable(gpu))
    }

    fn gpu_processes(&mut self, gpu: u32) -> Result<u32, GpuError> {
        self.ensure(gpu)?;
        device(&self.nvml, gpu)?
            .running_compute_processes_count()
            .map_err(|e| nvml_err("listing compute processes", gpu, e))
    }
}

#[cfg(test)]
mod tests;
