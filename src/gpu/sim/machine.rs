//! The simulated machine: plain serde state plus NVML's MIG semantics; it must not do I/O or locking.
//!
//! Both the `--simulate` backend and the fake `libnvidia-ml.so` drive this same type, so the rules
//! (overlap -> INSUFFICIENT_RESOURCES, instance-count limits, one `+me` per GPU, MIG off ->
//! NOT_SUPPORTED, destroying a GI with a CI or a CI with processes -> IN_USE) live in one place;
//! compute instances inside a GI are in `sim::ci`.

use super::latency::Latency;
use super::models::{self, Model, ModelError};
use crate::gpu::rules::{self, Occupant};
use crate::gpu::{Code, ComputeInstance, GiProfile, GpuInfo, GpuInstance, MigMode, Placement};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// One `MODEL[:COUNT][:mig-off]` group of a simulation spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecEntry {
    pub model: String,
    pub count: u32,
    pub mig_on: bool,
}

/// A parsed `--simulate` spec, e.g. `a100-40gb:2,h100-80gb:1:mig-off`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSpec {
    pub entries: Vec<SpecEntry>,
}

/// Errors from a simulation spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("bad --simulate spec {spec:?}: {why}; the form is MODEL[:COUNT][:mig-off] joined by commas, e.g. h100-80gb:8 or a100-40gb:2,h100-80gb:1:mig-off")]
    Syntax { spec: String, why: String },
    // Not `#[from]`: the model error is the whole message, so it must not repeat as a source in `{:#}`.
    #[error("bad --simulate spec: {0}")]
    Model(ModelError),
}

impl crate::exit::ExitCodeOf for SpecError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

impl From<ModelError> for SpecError {
    fn from(e: ModelError) -> Self {
        SpecError::Model(e)
    }
}

/// Most GPUs one simulated machine may have (NVML indices are small; 64 covers any real host).
pub const MAX_SIM_GPUS: u32 = 64;

impl FromStr for SimSpec {
    type Err = SpecError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax = |why: String| SpecError::Syntax {
            spec: spec.into(),
            why,
        };
        let mut entries = Vec::new();
        for group in spec.split(',') {
            let group = group.trim();
            // Quoted in errors: escaped, so a control character cannot break the one-line message.
            let shown = group.escape_debug();
            if group.is_empty() {
                return Err(syntax("empty model entry".into()));
            }
            let mut parts = group.split(':');
            let model_key = parts.next().unwrap_or_default().to_ascii_lowercase();
            models::model(&model_key)?;
            let mut count = 1;
            let mut mig_on = true;
            for (i, part) in parts.enumerate() {
                match part {
                    "mig-off" => mig_on = false,
                    "mig-on" => mig_on = true,
                    n if i == 0 && n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
                        count = n
                            .parse()
                            .map_err(|_| syntax(format!("GPU count {n:?} is too large")))?;
                        if count == 0 {
                            return Err(syntax(format!("{shown}: GPU count must be at least 1")));
                        }
                    }
                    other => {
                        return Err(syntax(format!(
                            "{shown}: unexpected {other:?} (expected a GPU count or mig-off)"
                        )))
                    }
                }
            }
            entries.push(SpecEntry {
                model: model_key,
                count,
                mig_on,
            });
        }
        let total: u64 = entries.iter().map(|e| e.count as u64).sum();
        if total > MAX_SIM_GPUS as u64 {
            return Err(syntax(format!(
                "{total} GPUs asked for; at most {MAX_SIM_GPUS} can be simulated"
            )));
        }
        Ok(SimSpec { entries })
    }
}

impl fmt::Display for SimSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", e.model, e.count)?;
            if !e.mig_on {
                f.write_str(":mig-off")?;
            }
        }
        Ok(())
    }
}

/// A compute instance of the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCi {
    pub id: u32,
    pub uuid: String,
    /// Its CI profile ID; `None` in a state file from before CI profiles (then the full-GI one).
    #[serde(default)]
    pub profile_id: Option<u32>,
    /// Where it sits inside its GI, in the GI's compute slices; `None`: the whole GI (as above).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Simulated compute processes on this compute instance's MIG device.
    #[serde(default)]
    pub processes: u32,
}

/// A GPU instance of the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGi {
    pub id: u32,
    pub profile_id: u32,
    pub placement: Placement,
    pub cis: Vec<SimCi>,
    /// Simulated compute processes on this instance (set by tests through `migrun sim add-process`).
    #[serde(default)]
    pub processes: u32,
}

/// One simulated GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGpu {
    pub model: String,
    pub index: u32,
    pub uuid: String,
    pub mig: MigMode,
    pub instances: Vec<SimGi>,
    /// Simulated compute processes on the whole GPU while MIG is off (blocks mode changes).
    #[serde(default)]
    pub gpu_processes: u32,
    /// Bumped on every create so that UUIDs of re-created instances differ, as on real hardware.
    pub serial: u64,
}

/// The whole simulated machine; serialised to the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimMachine {
    pub spec: SimSpec,
    pub gpus: Vec<SimGpu>,
    /// How long each driver operation takes (`migrun sim latency`); absent (off) in a fresh machine.
    #[serde(default, skip_serializing_if = "Latency::is_off")]
    pub latency: Latency,
}

/// A UUID-shaped string derived from `key`; stored in the state file, so it stays stable for the instance's life.
pub(super) fn uuid_from(key: &str) -> String {
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = DefaultHasher::new();
        i.hash(&mut h);
        key.hash(&mut h);
        *w = h.finish();
    }
    let b: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-5{:01x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 0x0f, b[7], (b[8] & 0x3f) | 0x80, b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

impl SimMachine {
    /// A fresh machine: every GPU idle, MIG as the spec says.
    pub fn new(spec: &SimSpec) -> SimMachine {
        let mut gpus = Vec::new();
        for e in &spec.entries {
            for _ in 0..e.count {
                let index = gpus.len() as u32;
                let mode = MigMode {
                    current: e.mig_on,
                    pending: e.mig_on,
                };
                gpus.push(SimGpu {
                    uuid: format!("GPU-{}", uuid_from(&format!("gpu/{}/{index}", e.model))),
                    model: e.model.clone(),
                    index,
                    mig: mode,
                    instances: Vec::new(),
                    gpu_processes: 0,
                    serial: 0,
                });
            }
        }
        SimMachine {
            spec: spec.clone(),
            gpus,
            latency: Latency::default(),
        }
    }

    fn gpu(&self, gpu: u32) -> Result<&SimGpu, Code> {
        self.gpus.get(gpu as usize).ok_or(Code::InvalidArgument)
    }
    fn gpu_mut(&mut self, gpu: u32) -> Result<&mut SimGpu, Code> {
        self.gpus.get_mut(gpu as usize).ok_or(Code::InvalidArgument)
    }
    /// GPU instance `gi` of `gpu` (NOT_FOUND when it does not exist), for the GI and CI models alike.
    pub(super) fn instance(&self, gpu: u32, gi: u32) -> Result<&SimGi, Code> {
        self.gpu(gpu)?
            .instances
            .iter()
            .find(|i| i.id == gi)
            .ok_or(Code::NotFound)
    }
    pub(super) fn instance_mut(&mut self, gpu: u32, gi: u32) -> Result<&mut SimGi, Code> {
        self.gpu_mut(gpu)?
            .instances
            .iter_mut()
            .find(|i| i.id == gi)
            .ok_or(Code::NotFound)
    }

    /// The model of a GPU. The spec was validated when the machine was made, so this only fails on a tampered state file.
    pub fn model(&self, gpu: u32) -> Result<Model, Code> {
        models::model(&self.gpu(gpu)?.model).map_err(|_| Code::Unknown)
    }

    pub fn gpu_infos(&self) -> Vec<GpuInfo> {
        self.gpus
            .iter()
            .map(|g| {
                let m = models::model(&g.model).ok();
                GpuInfo {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    name: m.as_ref().map_or("unknown".into(), |m| m.product.into()),
                    memory_mib: m.as_ref().map_or(0, |m| m.memory_mib),
                    mig: Some(g.mig),
                }
            })
            .collect()
    }

    /// Profiles with remaining capacity computed from the instances that exist now.
    pub fn profiles(&self, gpu: u32) -> Result<Vec<GiProfile>, Code> {
        let g = self.gpu(gpu)?;
        let model = self.model(gpu)?;
        let mut profiles = model.profiles.clone();
        rules::fill_remaining(&mut profiles, &occupants(g));
        Ok(profiles)
    }

    pub fn instances(&self, gpu: u32) -> Result<Vec<GpuInstance>, Code> {
        let g = self.gpu(gpu)?;
        Ok(g.instances
            .iter()
            .map(|gi| GpuInstance {
                id: gi.id,
                profile_id: gi.profile_id,
                placement: gi.placement,
                compute_instances: gi
                    .cis
                    .iter()
                    .map(|c| ComputeInstance {
                        id: c.id,
                        mig_uuid: c.uuid.clone(),
                        processes: c.processes,
                    })
                    .collect(),
                processes: gi.processes + gi.cis.iter().map(|c| c.processes).sum::<u32>(),
            })
            .collect())
    }

    /// nvmlDeviceCreateGpuInstanceWithPlacement.
    pub fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, Code> {
        let model = self.model(gpu)?;
        let g = self.gpu_mut(gpu)?;
        if !g.mig.current {
            return Err(Code::NotSupported);
        }
        let profile = model
            .profiles
            .iter()
            .find(|p| p.id == profile_id)
            .ok_or(Code::InvalidArgument)?;
        let placement = *profile
            .placements
            .iter()
            .find(|p| p.start == start)
            .ok_or(Code::InvalidArgument)?;
        if !rules::fits(&model.profiles, &occupants(g), profile, &placement) {
            return Err(Code::InsufficientResources);
        }
        // GI ids are not tied to placements: take the lowest free id starting at 1, as the driver does.
        let id = rules::lowest_free_id(1, g.instances.iter().map(|gi| gi.id));
        g.serial += 1;
        g.instances.push(SimGi {
            id,
            profile_id,
            placement,
            cis: Vec::new(),
            processes: 0,
        });
        Ok(id)
    }

    /// nvmlDeviceCreateGpuInstance: no placement given, so the driver picks the lowest free one.
    pub fn create_gi_anywhere(&mut self, gpu: u32, profile_id: u32) -> Result<u32, Code> {
        let model = self.model(gpu)?;
        let g = self.gpu(gpu)?;
        if !g.mig.current {
            return Err(Code::NotSupported);
        }
        let profile = model
            .profiles
            .iter()
            .find(|p| p.id == profile_id)
            .ok_or(Code::InvalidArgument)?;
        let start = profile
            .placements
            .iter()
            .find(|p| rules::fits(&model.profiles, &occupants(g), profile, p))
            .ok_or(Code::InsufficientResources)?
            .start;
        self.create_gi(gpu, profile_id, start)
    }

    pub fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), Code> {
        let inst = self.instance_mut(gpu, gi)?;
        let pos = inst
            .cis
            .iter()
            .position(|c| c.id == ci)
            .ok_or(Code::NotFound)?;
        // Processes counted on the GI (`migrun sim add-process`) or on this compute instance.
        if inst.processes > 0 || inst.cis[pos].processes > 0 {
            return Err(Code::InUse);
        }
        inst.cis.remove(pos);
        Ok(())
    }

    pub fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), Code> {
        let g = self.gpu_mut(gpu)?;
        let pos = g
            .instances
            .iter()
            .position(|i| i.id == gi)
            .ok_or(Code::NotFound)?;
        let inst = &g.instances[pos];
        if !inst.cis.is_empty() || inst.processes > 0 {
            return Err(Code::InUse);
        }
        g.instances.remove(pos);
        Ok(())
    }

    /// nvmlDeviceSetMigMode: the change is pending until [`SimMachine::reset_gpu`].
    pub fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<MigMode, Code> {
        let g = self.gpu_mut(gpu)?;
        if !enable && !g.instances.is_empty() {
            return Err(Code::InUse);
        }
        if g.gpu_processes > 0 {
            return Err(Code::InUse);
        }
        g.mig.pending = enable;
        Ok(g.mig)
    }

    /// A simulated `nvidia-smi -r`: applies a pending mode; refused while instances or processes exist.
    pub fn reset_gpu(&mut self, gpu: u32) -> Result<MigMode, Code> {
        let g = self.gpu_mut(gpu)?;
        if !g.instances.is_empty() || g.gpu_processes > 0 {
            return Err(Code::InUse);
        }
        g.mig.current = g.mig.pending;
        Ok(g.mig)
    }

    /// Attach (or with 0, detach) simulated compute processes to a GI.
    pub fn set_processes(&mut self, gpu: u32, gi: u32, count: u32) -> Result<(), Code> {
        self.instance_mut(gpu, gi)?.processes = count;
        Ok(())
    }

    /// Pretend `count` compute processes run on the whole GPU (outside any MIG instance).
    pub fn set_gpu_processes(&mut self, gpu: u32, count: u32) -> Result<(), Code> {
        self.gpu_mut(gpu)?.gpu_processes = count;
        Ok(())
    }

    /// Compute processes anywhere on the GPU.
    pub fn gpu_processes(&self, gpu: u32) -> Result<u32, Code> {
        let g = self.gpu(gpu)?;
        Ok(g.gpu_processes
            + g.instances
                .iter()
                .map(|i| i.processes + i.cis.iter().map(|c| c.processes).sum::<u32>())
                .sum::<u32>())
    }
}

fn occupants(g: &SimGpu) -> Vec<Occupant> {
    g.instances
        .iter()
        .map(|i| Occupant {
            profile_id: i.profile_id,
            placement: i.placement,
        })
        .collect()
}

#[cfg(test)]
mod tests;
