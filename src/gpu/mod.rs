//! The hardware trait and the plain-data MIG state it reports; it must not decide placements or know leases.
//!
//! Everything here is in migrun's own terms (GPUs, MIG mode, GI profiles, placements, GIs, CIs,
//! MIG-device UUIDs). Two backends implement [`Backend`]: [`sim`] (simulated GPUs from the compiled-in
//! profile tables) and [`nvml`] (the driver, through nvml-wrapper). Callers get plain serde data back,
//! so the placement policy can work on a snapshot without touching hardware.

pub mod ci_tables;
pub mod hostfacts;
pub mod names;
pub mod nvml;
pub mod rules;
pub mod sim;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A GPU's MIG mode as NVML reports it: the mode in force and the one that takes effect after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigMode {
    pub current: bool,
    pub pending: bool,
}

impl MigMode {
    /// True when a mode change waits for a GPU reset.
    pub fn change_pending(&self) -> bool {
        self.current != self.pending
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "Enabled"
    } else {
        "Disabled"
    }
}

impl fmt::Display for MigMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.change_pending() {
            write!(
                f,
                "{} (pending: {})",
                on_off(self.current),
                on_off(self.pending)
            )
        } else {
            f.write_str(on_off(self.current))
        }
    }
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (what `nvidia-smi -i` takes).
    pub index: u32,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total framebuffer memory in MiB.
    pub memory_mib: u64,
    /// `None` when the GPU is not MIG-capable.
    pub mig: Option<MigMode>,
}

impl GpuInfo {
    /// `GPU 0 (GPU-0485…)`: how every message names a GPU.
    pub fn label(&self) -> String {
        format!("GPU {} ({})", self.index, self.uuid)
    }
}

/// A placement in memory-slice units: `[start, start+size)`, exactly what `nvidia-smi mig -lgipp` prints as `{start}:size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    pub start: u32,
    pub size: u32,
}

impl Placement {
    pub fn end(&self) -> u32 {
        self.start + self.size
    }
    /// Two instances conflict when their slice ranges overlap.
    pub fn overlaps(&self, other: &Placement) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.size)
    }
}

/// A GPU-instance profile on one GPU (nvmlGpuInstanceProfileInfo_v2 plus placements and remaining capacity).
///
/// Engine counts are `Option` because some simulated models have unknown values; they are shown as
/// unknown rather than invented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GiProfile {
    /// NVML_GPU_INSTANCE_PROFILE_* index used to query the profile.
    pub nvml_index: u32,
    /// Device-reported profile ID (what create/placement calls take, and `-cgi` accepts).
    pub id: u32,
    /// Full name as NVML reports it, e.g. `MIG 3g.40gb`.
    pub name: String,
    /// Compute slices (the `Ng` in the name).
    pub slice_count: u32,
    /// Maximum number of instances of this profile on the GPU.
    pub instance_count: u32,
    pub memory_mib: u64,
    pub p2p: bool,
    pub sm: Option<u32>,
    pub ce: Option<u32>,
    pub dec: Option<u32>,
    pub enc: Option<u32>,
    pub jpeg: Option<u32>,
    pub ofa: Option<u32>,
    /// Every placement the profile may take, in memory-slice units.
    pub placements: Vec<Placement>,
    /// How many more instances of this profile could be created now (`Free` in `-lgip`).
    pub remaining: u32,
}

impl GiProfile {
    /// The short name (`3g.40gb`) without the `MIG ` prefix.
    pub fn short_name(&self) -> &str {
        self.name.strip_prefix("MIG ").unwrap_or(&self.name)
    }
    /// Memory slices one instance covers (all placements of a profile share a size).
    pub fn placement_size(&self) -> u32 {
        self.placements.first().map(|p| p.size).unwrap_or(0)
    }
}

/// A compute instance inside a GPU instance, with the MIG device it shows up as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    pub id: u32,
    /// `MIG-<uuid>` of the MIG device, the value NVIDIA_VISIBLE_DEVICES takes.
    pub mig_uuid: String,
    /// Compute processes on this MIG device: a compute instance in use is never destroyed (IN_USE).
    #[serde(default)]
    pub processes: u32,
}

/// A compute-instance profile of one existing GPU instance, as the device reports it
/// (nvmlComputeInstanceProfileInfo plus `-lcipp` placements and the remaining capacity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiProfile {
    /// The NVML_COMPUTE_INSTANCE_PROFILE_* index it was read under.
    pub nvml_index: u32,
    /// The device's profile ID (what creating a compute instance takes).
    pub id: u32,
    /// Compute slices of the GPU instance it takes.
    pub slice_count: u32,
    /// How many fit in one GPU instance.
    pub instance_count: u32,
    /// Where it may sit inside the GPU instance, in compute-slice units of that instance.
    pub placements: Vec<Placement>,
    /// How many more could be created in this GPU instance now.
    pub remaining: u32,
}

/// Where one compute instance sits inside its GPU instance (`nvidia-smi mig -lci`'s profile and placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiPlacement {
    /// The compute instance's id within its GPU instance.
    pub ci: u32,
    /// Its CI profile ID.
    pub profile_id: u32,
    /// The compute slices of the GPU instance it takes.
    pub placement: Placement,
}

/// A GPU instance as it exists on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub placement: Placement,
    pub compute_instances: Vec<ComputeInstance>,
    /// Compute processes running on this instance's MIG devices; a busy instance is never handed out or destroyed.
    pub processes: u32,
}

impl GpuInstance {
    /// The MIG UUID of the first compute instance, which is what migrun hands out.
    pub fn mig_uuid(&self) -> Option<&str> {
        self.compute_instances.first().map(|c| c.mig_uuid.as_str())
    }
}

/// Everything known about one GPU at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuState {
    pub info: GpuInfo,
    /// Supported GI profiles; empty when the GPU is not MIG-capable.
    pub profiles: Vec<GiProfile>,
    /// Existing GPU instances; empty while MIG mode is off.
    pub instances: Vec<GpuInstance>,
}

impl GpuState {
    /// Number of memory slices on this GPU's placement grid (8 on A100/H100, 4 on A30, 12 on RTX PRO 6000).
    pub fn slots(&self) -> u32 {
        self.profiles
            .iter()
            .flat_map(|p| p.placements.iter())
            .map(|p| p.end())
            .max()
            .unwrap_or(0)
    }
    pub fn profile_by_id(&self, id: u32) -> Option<&GiProfile> {
        self.profiles.iter().find(|p| p.id == id)
    }
}

impl GpuState {
    /// The slot map, e.g. `|3g.40gb        |1g |1g |.. |.. |`: one 3-character cell per memory slice,
    /// an instance spanning its slices, free slices as `..`. Shared by `migrun status` and the
    /// allocator's no-room explanations.
    pub fn slot_map(&self) -> String {
        self.slot_map_marking(&[])
    }

    /// [`GpuState::slot_map`] with the GPU instances in `shared` (GI ids, compute-instance sharing) labelled
    /// with their count of compute instances, e.g. `|3g.40gb/3ci    |`.
    pub fn slot_map_marking(&self, shared: &[u32]) -> String {
        const CELL: usize = 3;
        let slots = self.slots();
        let mut out = String::from("|");
        let mut s = 0;
        let mut insts: Vec<_> = self.instances.iter().collect();
        insts.sort_by_key(|i| i.placement.start);
        while s < slots {
            if let Some(i) = insts.iter().find(|i| i.placement.start == s) {
                let width = i.placement.size as usize * (CELL + 1) - 1;
                let name = self
                    .profile_by_id(i.profile_id)
                    .map_or(format!("id{}", i.profile_id), |p| {
                        p.short_name().to_string()
                    });
                let name = if shared.contains(&i.id) {
                    format!("{name}/{}ci", i.compute_instances.len())
                } else {
                    name
                };
                let name = if name.len() > width {
                    name.split('.').next().unwrap_or("").to_string()
                } else {
                    name
                };
                out.push_str(&format!("{name:<width$}|"));
                s += i.placement.size;
            } else {
                out.push_str(&format!("{:<CELL$}|", ".."));
                s += 1;
            }
        }
        out
    }
}

/// A snapshot of every GPU: the input of the pure placement policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigState {
    pub gpus: Vec<GpuState>,
}

impl MigState {
    pub fn gpu(&self, index: u32) -> Option<&GpuState> {
        self.gpus.iter().find(|g| g.info.index == index)
    }
}

/// The NVML return codes migrun distinguishes; the simulator reproduces the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Code {
    Uninitialized,
    InvalidArgument,
    NotSupported,
    NoPermission,
    NotFound,
    InsufficientSize,
    InsufficientResources,
    InUse,
    LibraryNotFound,
    FunctionNotFound,
    DriverNotLoaded,
    GpuLost,
    Unknown,
}

impl Code {
    /// The NVML_ERROR_* value of this code (nvml.h).
    pub fn nvml_value(self) -> u32 {
        match self {
            Code::Uninitialized => 1,
            Code::InvalidArgument => 2,
            Code::NotSupported => 3,
            Code::NoPermission => 4,
            Code::NotFound => 6,
            Code::InsufficientSize => 7,
            Code::DriverNotLoaded => 9,
            Code::LibraryNotFound => 12,
            Code::FunctionNotFound => 13,
            Code::GpuLost => 15,
            Code::InUse => 19,
            Code::InsufficientResources => 23,
            Code::Unknown => 999,
        }
    }
    pub fn from_nvml_value(v: u32) -> Code {
        match v {
            1 => Code::Uninitialized,
            2 => Code::InvalidArgument,
            3 => Code::NotSupported,
            4 => Code::NoPermission,
            6 => Code::NotFound,
            7 => Code::InsufficientSize,
            9 => Code::DriverNotLoaded,
            12 => Code::LibraryNotFound,
            13 => Code::FunctionNotFound,
            15 => Code::GpuLost,
            19 => Code::InUse,
            23 => Code::InsufficientResources,
            _ => Code::Unknown,
        }
    }
    /// NVML's own spelling, e.g. `INSUFFICIENT_RESOURCES`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Uninitialized => "UNINITIALIZED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotSupported => "NOT_SUPPORTED",
            Code::NoPermission => "NO_PERMISSION",
            Code::NotFound => "NOT_FOUND",
            Code::InsufficientSize => "INSUFFICIENT_SIZE",
            Code::InsufficientResources => "INSUFFICIENT_RESOURCES",
            Code::InUse => "IN_USE",
            Code::LibraryNotFound => "LIBRARY_NOT_FOUND",
            Code::FunctionNotFound => "FUNCTION_NOT_FOUND",
            Code::DriverNotLoaded => "DRIVER_NOT_LOADED",
            Code::GpuLost => "GPU_IS_LOST",
            Code::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from a hardware backend. Messages name the GPU and say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot load the NVIDIA driver library {lib}: {reason}; install the NVIDIA driver (it ships libnvidia-ml.so.1), set MIGRUN_NVML_LIB to its path, or try migrun without a GPU with --simulate h100-80gb")]
    NoDriver { lib: String, reason: String },
    #[error("GPU {index} does not exist: this machine has {count} GPU(s){}", if *.count > 0 { format!(" (valid: 0..={})", .count - 1) } else { String::new() })]
    NoSuchGpu { index: u32, count: u32 },
    #[error("{gpu} ({name}) is not MIG-capable; MIG needs an A30, A100, H100, H200, B200 or RTX PRO 6000 class GPU")]
    NotMigCapable { gpu: String, name: String },
    #[error("MIG mode is disabled on {gpu}: enable it with `sudo nvidia-smi -i {index} -mig 1` (or `migrun mig enable --gpu {index}`), then reset the GPU (`sudo nvidia-smi -r -i {index}` with nothing running on it) or reboot")]
    MigDisabled { gpu: String, index: u32 },
    #[error("{op} needs root: NVML answered NO_PERMISSION; run migrun as root (e.g. through a sudoers rule for migrun) or use the migrun runtime shim from a docker-group account")]
    NoPermission { op: String },
    #[error("{op} on GPU {gpu} failed: {code}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Nvml {
        op: String,
        gpu: u32,
        code: Code,
        detail: String,
    },
    #[error("simulator state: {0}")]
    Sim(String),
    /// Reading or writing the simulated machine's file failed mid-operation (a full or read-only file system):
    /// the operation failed, the spec was fine.
    #[error("simulator state: {0}")]
    SimIo(String),
}

impl GpuError {
    /// The NVML code behind this error, when there is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            GpuError::Nvml { code, .. } => Some(*code),
            GpuError::NoPermission { .. } => Some(Code::NoPermission),
            GpuError::MigDisabled { .. } => Some(Code::NotSupported),
            _ => None,
        }
    }
    pub fn nvml(op: impl Into<String>, gpu: u32, code: Code) -> Self {
        GpuError::Nvml {
            op: op.into(),
            gpu,
            code,
            detail: String::new(),
        }
    }
}

/// Which kind of machine a backend drives. A state dir records it at first use and refuses another
/// (see `alloc::binding`): leases reconciled against the wrong machine would all look vanished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Simulated GPUs of this `--simulate` spec.
    Simulator { spec: String },
    /// The NVIDIA driver, through NVML.
    Nvml,
}

/// The one hardware trait. All calls are by GPU index; handles never leave a backend.
pub trait Backend {
    /// What this backend drives.
    fn kind(&self) -> BackendKind;
    /// Every GPU, in NVML index order.
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError>;
    /// The GPU's GI profiles with placements and remaining capacity. Works with MIG mode off, as NVML does.
    fn profiles(&mut self, gpu: u32) -> Result<Vec<GiProfile>, GpuError>;
    /// Existing GPU instances with their compute instances and MIG UUIDs (empty while MIG is off).
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError>;
    /// Create a GI of profile `profile_id` at `start` (memory-slice units). Returns the new GI id.
    fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, GpuError>;
    /// Create the default (full-slice, shared-engine) compute instance in GI `gi`.
    fn create_default_ci(&mut self, gpu: u32, gi: u32) -> Result<ComputeInstance, GpuError>;
    /// The compute-instance profiles GI `gi` offers, with placements inside it and remaining capacity.
    fn ci_profiles(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiProfile>, GpuError>;
    /// Create a compute instance of CI profile `profile_id` in GI `gi` at compute slice `start` of that GI
    /// (nvmlGpuInstanceCreateComputeInstanceWithPlacement); INSUFFICIENT_RESOURCES when it does not fit.
    fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, GpuError>;
    /// Where each compute instance of GI `gi` sits (its profile ID and compute slices), by CI id.
    fn ci_placements(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiPlacement>, GpuError>;
    /// Destroy compute instance `ci` of GI `gi`. IN_USE while processes run on it.
    fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), GpuError>;
    /// Destroy GI `gi`. IN_USE while it still has compute instances or processes.
    fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), GpuError>;
    /// Request MIG mode on or off; returns the mode as NVML reports it afterwards (often a pending change).
    fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<MigMode, GpuError>;
    /// Compute processes running anywhere on the GPU (used to refuse MIG mode changes).
    fn gpu_processes(&mut self, gpu: u32) -> Result<u32, GpuError>;

    /// The profiles of `gpu` as [`Backend::snapshot`] reports them, given the instances it has just listed. By
    /// default [`Backend::profiles`]; a backend whose remaining-capacity query is slow may derive `remaining` from
    /// `instances` instead (the NVML backend does).
    fn snapshot_profiles(
        &mut self,
        gpu: u32,
        instances: &[GpuInstance],
    ) -> Result<Vec<GiProfile>, GpuError> {
        let _ = instances;
        self.profiles(gpu)
    }

    /// The host's device numbering for this backend's GPUs (char majors, MIG capability minors, GPU
    /// device minors), which a slice's CDI spec needs. By default the real host's, read under
    /// [`hostfacts::host_root`]; the simulator serves its own. A provided method, so that wrappers
    /// (the test fault injector) need not forward it: the session asks the backend itself.
    fn host_facts(&mut self) -> Result<hostfacts::HostFacts, hostfacts::HostFactsError> {
        hostfacts::HostFacts::read_from(&hostfacts::host_root())
    }

    /// A fingerprint of this backend's host facts ([`hostfacts::HostFacts::fingerprint`]): facts cached
    /// under an equal one need not be read again. `None`: do not cache. Provided like [`Backend::host_facts`].
    fn host_facts_key(&mut self) -> Result<Option<String>, hostfacts::HostFactsError> {
        hostfacts::HostFacts::fingerprint(&hostfacts::host_root())
    }

    /// The compute instances of GI `gi` with their MIG-device UUIDs; NOT_FOUND when the GI does not exist.
    fn compute_instances(&mut self, gpu: u32, gi: u32) -> Result<Vec<ComputeInstance>, GpuError> {
        self.instances(gpu)?
            .into_iter()
            .find(|i| i.id == gi)
            .map(|i| i.compute_instances)
            .ok_or_else(|| GpuError::Nvml {
                op: "listing compute instances".into(),
                gpu,
                code: Code::NotFound,
                detail: format!("GPU {gpu} has no GPU instance {gi}"),
            })
    }

    /// A plain-data snapshot of every GPU.
    fn snapshot(&mut self) -> Result<MigState, GpuError> {
        let mut gpus = Vec::new();
        for info in self.gpus()? {
            let (profiles, instances) = match info.mig {
                None => (Vec::new(), Vec::new()),
                Some(mode) => {
                    let instances = if mode.current {
                        settled_instances(self, info.index)?
                    } else {
                        Vec::new()
                    };
                    (self.snapshot_profiles(info.index, &instances)?, instances)
                }
            };
            gpus.push(GpuState {
                info,
                profiles,
                instances,
            });
        }
        Ok(MigState { gpus })
    }
}

/// How many walks of a GPU's instances a snapshot makes at most before it takes the last one.
const SNAPSHOT_WALKS: usize = 4;

/// A GPU's instances, walked until two walks in a row agree. Why: NVML lists MIG devices by index, and a create or
/// destroy by another process (run outside migrun's lock since issue 23) shifts the indices mid-walk, so one walk can
/// miss a live instance; a sweep would take it for gone, drop its lease and forget that migrun made it (found by the
/// contention benchmark on the fake NVML). Two walks that agree saw no such change between them.
fn settled_instances<B: Backend + ?Sized>(
    b: &mut B,
    gpu: u32,
) -> Result<Vec<GpuInstance>, GpuError> {
    let mut last = b.instances(gpu)?;
    for _ in 1..SNAPSHOT_WALKS {
        let next = b.instances(gpu)?;
        if next == last {
            return Ok(next);
        }
        last = next;
    }
    Ok(last)
}

impl crate::exit::ExitCodeOf for GpuError {
    fn exit_code(&self) -> i32 {
        use crate::exit::{FAILED, PRIVILEGE, USAGE};
        match self {
            GpuError::NoSuchGpu { .. } | GpuError::Sim(_) => USAGE,
            GpuError::NoPermission { .. } => PRIVILEGE,
            _ => FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_overlap_by_slice_range() {
        let a = Placement { start: 0, size: 4 };
        let b = Placement { start: 4, size: 4 };
        let c = Placement { start: 3, size: 1 };
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c));
        assert!(!b.overlaps(&c));
        assert_eq!(a.to_string(), "0:4");
    }

    #[test]
    fn nvml_codes_round_trip() {
        for c in [
            Code::InvalidArgument,
            Code::NotSupported,
            Code::NoPermission,
            Code::NotFound,
            Code::InsufficientSize,
            Code::InsufficientResources,
            Code::InUse,
        ] {
            assert_eq!(Code::from_nvml_value(c.nvml_value()), c);
        }
    }
}
