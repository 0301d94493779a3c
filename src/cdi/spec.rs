//! Builds and validates the CDI spec of one MIG slice from its numbers and the host facts (pure); it must not read or write files.
//!
//! The spec is the crate's `Spec`. The crate keeps most of its fields private to itself and offers
//! no builder, so the spec is assembled as JSON and deserialised into the crate's type (which
//! refuses unknown fields), then checked by the crate's own checks ([`check`]: version, annotations,
//! device names, edits), the same for a spec read back and the toolkit's; the crate's JSON-schema pass
//! runs in the tests only, where every shape the builder makes goes through it. `cdiVersion` is the
//! lowest version the content needs, as the crate computes it: older engines (podman 4.x, containerd
//! 1.7) reject versions newer than the CDI library they vendor.

use super::types::{ContainerEdits, Spec};
use crate::gpu::hostfacts::{HostFacts, NVIDIACTL_MINOR, NVIDIA_MAJOR};
use crate::lease::{LeaseId, LeaseName};
use container_device_interface::container_edits::ContainerEdits as Edits;
use container_device_interface::container_edits::Validate as _;
use container_device_interface::internal::validation::validate::validate_spec_annotations;
use container_device_interface::specs::config::Device as CdiDevice;
use container_device_interface::{device, spec as cdi_spec, version};
use serde::Deserialize as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
#[cfg(test)]
use std::path::PathBuf;

/// migrun's CDI kind: `--device migrun.io/mig=<lease id | lease name | MIG UUID>`.
pub const KIND: &str = "migrun.io/mig";

/// `/dev/nvidia<m>`, `/dev/nvidiactl` and `/dev/nvidia-uvm*` are opened read-write by every CUDA
/// process; 0666 is the driver's default NVreg_DeviceFileMode.
const GPU_NODE_MODE: u32 = 0o666;
/// Capability nodes are only opened for reading, so the driver makes them read-only: the H200
/// capture (tests/fixtures/h200-141gb-caps/caps-detail.txt) has DeviceFileMode 292 (0444) for the
/// read-only `monitor` capability; the per-instance `access` capabilities are registered the same
/// way (they were not captured: no instance existed).
const CAP_NODE_MODE: u32 = 0o444;

/// One MIG slice, in the numbers the driver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub lease: LeaseId,
    /// A name the user gave the lease, also usable as the device name.
    pub name: Option<String>,
    /// `MIG-…`, the value NVIDIA_VISIBLE_DEVICES takes.
    pub mig_uuid: String,
    /// The parent GPU's device minor (`/dev/nvidia<minor>`), which is not its NVML index: see
    /// [`HostFacts::gpu_minor`].
    pub gpu_minor: u32,
    pub gi: u32,
    pub ci: u32,
}

impl Slice {
    /// Every name the slice's device goes by, in the order written: lease id, lease name, MIG UUID.
    pub fn device_names(&self) -> Vec<String> {
        let mut names = vec![self.lease.to_string()];
        names.extend(self.name.clone());
        names.push(self.mig_uuid.clone());
        names
    }
}

/// `migrun.io/mig=<name>`, what `--device` takes.
pub fn qualified_name(name: &str) -> String {
    format!("{KIND}={name}")
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("lease name {name:?} cannot name a CDI device: {why}; choose another name")]
    BadName { name: String, why: &'static str },
    #[error("no {what} entry in /proc/driver/nvidia-caps/mig-minors: the driver knows no such MIG instance; check the GPU's device minor and the GI/CI ids with `nvidia-smi mig -lgi` and `nvidia-smi mig -lci`")]
    NoCapMinor { what: String },
    #[error("{what} does not validate: {reason}; this is a migrun bug: please report it")]
    Invalid { what: String, reason: String },
    #[error("no device {name:?} in the CDI spec of kind {KIND}; its devices are {names}")]
    NoDevice { name: String, names: String },
}

impl crate::exit::ExitCodeOf for SpecError {
    fn exit_code(&self) -> i32 {
        match self {
            SpecError::BadName { .. } | SpecError::NoDevice { .. } => crate::exit::USAGE,
            SpecError::NoCapMinor { .. } | SpecError::Invalid { .. } => crate::exit::FAILED,
        }
    }
}

/// The numbers a slice's device nodes need: its GPU's device minor, the capability minors of its GPU
/// instance and compute instance, and the majors. Taken from the host facts
/// ([`SliceNodes::of`]), or from the state dir's cache of them (`cdi::cache`), so that a
/// process need not read and parse `mig-minors` for every allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceNodes {
    pub gpu_minor: u32,
    pub gi_access: u32,
    pub ci_access: u32,
    pub caps_major: u32,
    pub uvm_major: u32,
}

impl SliceNodes {
    /// The numbers of `slice` in `facts`; `Err` when `mig-minors` has no entry for its GI or CI.
    pub fn of(slice: &Slice, facts: &HostFacts) -> Result<SliceNodes, SpecError> {
        let (m, gi, ci) = (slice.gpu_minor, slice.gi, slice.ci);
        let gi_access = facts
            .mig_minors
            .gi_access(m, gi)
            .ok_or_else(|| SpecError::NoCapMinor {
                what: format!("gpu{m}/gi{gi}/access"),
            })?;
        let ci_access =
            facts
                .mig_minors
                .ci_access(m, gi, ci)
                .ok_or_else(|| SpecError::NoCapMinor {
                    what: format!("gpu{m}/gi{gi}/ci{ci}/access"),
                })?;
        Ok(SliceNodes {
            gpu_minor: m,
            gi_access,
            ci_access,
            caps_major: facts.caps_major,
            uvm_major: facts.uvm_major,
        })
    }
}

/// A char device node with every number given, so the runtime creates it in the container whether
/// or not the host has it (the driver creates capability nodes lazily).
fn char_node(path: String, major: u32, minor: u32, mode: u32) -> Value {
    json!({ "path": path, "type": "c", "major": major, "minor": minor, "fileMode": mode })
}

/// The device nodes a process needs to use this MIG device, in the order written.
fn device_nodes(n: &SliceNodes) -> Vec<Value> {
    let m = n.gpu_minor;
    let cap = |minor: u32| {
        char_node(
            format!("/dev/nvidia-caps/nvidia-cap{minor}"),
            n.caps_major,
            minor,
            CAP_NODE_MODE,
        )
    };
    vec![
        char_node(format!("/dev/nvidia{m}"), NVIDIA_MAJOR, m, GPU_NODE_MODE),
        cap(n.gi_access),
        cap(n.ci_access),
        char_node(
            "/dev/nvidiactl".into(),
            NVIDIA_MAJOR,
            NVIDIACTL_MINOR,
            GPU_NODE_MODE,
        ),
        char_node("/dev/nvidia-uvm".into(), n.uvm_major, 0, GPU_NODE_MODE),
        char_node(
            "/dev/nvidia-uvm-tools".into(),
            n.uvm_major,
            1,
            GPU_NODE_MODE,
        ),
    ]
}

/// Validates `spec` with the crate's full `new_spec` (JSON schema, names, edits), as engines do; `Err`
/// is the crate's reason on one line. Only the tests call it: the schema pass compiles the CDI schema in
/// every process, and linking it brings the `jsonschema` crate's HTTP and TLS stack into the binary
/// (see [`check`]).
#[cfg(test)]
fn validate(spec: &Spec) -> Result<cdi_spec::Spec, String> {
    // The path only labels the spec inside the crate; nothing is read.
    cdi_spec::new_spec(spec, &PathBuf::from("migrun.json"), 0).map_err(|e| format!("{e:#}"))
}

fn from_json(v: &Value) -> Result<Spec, String> {
    Spec::deserialize(v).map_err(|e| e.to_string())
}

/// A lease name is also a device name in a directory shared by every lease: the lease's own rules
/// ([`LeaseName`]: CDI's device-name rules, and nothing that looks like a lease id or a MIG UUID).
fn check_name(name: &str) -> Result<(), SpecError> {
    LeaseName::check(name).map_err(|e| SpecError::BadName {
        name: name.to_string(),
        why: e.why,
    })
}

/// The CDI spec of one slice: kind [`KIND`], one device per name in [`Slice::device_names`], each
/// with the slice's device nodes and `NVIDIA_VISIBLE_DEVICES=<MIG UUID>` (plus `MIGRUN_LEASE=<id>`,
/// as the hooks set it). `toolkit` (see [`super::toolkit`]) becomes the spec's common
/// `containerEdits`: CDI applies those once per container that uses any device of the spec, so a
/// container naming the slice twice does not get the toolkit's hooks twice.
pub fn build(
    slice: &Slice,
    facts: &HostFacts,
    toolkit: Option<&ContainerEdits>,
) -> Result<Spec, SpecError> {
    Ok(build_from(slice, &SliceNodes::of(slice, facts)?, toolkit)?.0)
}

/// [`build`] from the slice's numbers, also returning what CDI applies for the device named by the
/// lease id (the common edits, then the device's), taken from the validation the spec just passed,
/// so a caller that writes the spec and applies it to a bundle validates it once.
pub fn build_from(
    slice: &Slice,
    nodes: &SliceNodes,
    toolkit: Option<&ContainerEdits>,
) -> Result<(Spec, ContainerEdits), SpecError> {
    if slice.gpu_minor != nodes.gpu_minor {
        return Err(SpecError::Invalid {
            what: format!("the CDI spec built for lease {}", slice.lease),
            reason: format!(
                "its numbers are for GPU minor {}, not {}",
                nodes.gpu_minor, slice.gpu_minor
            ),
        });
    }
    if let Some(name) = &slice.name {
        check_name(name)?;
    }
    let invalid = |reason: String| SpecError::Invalid {
        what: format!("the CDI spec built for lease {}", slice.lease),
        reason,
    };
    let edits = json!({
        "env": [
            format!("NVIDIA_VISIBLE_DEVICES={}", slice.mig_uuid),
            format!("MIGRUN_LEASE={}", slice.lease),
        ],
        "deviceNodes": device_nodes(nodes),
    });
    let devices: Vec<Value> = slice
        .device_names()
        .into_iter()
        .map(|name| json!({ "name": name, "containerEdits": edits }))
        .collect();
    let mut doc = json!({ "cdiVersion": "0.3.0", "kind": KIND, "devices": devices });
    if let Some(common) = toolkit.filter(|c| !is_empty(c)) {
        doc["containerEdits"] = serde_json::to_value(common).map_err(|e| invalid(e.to_string()))?;
    }
    let draft = from_json(&doc).map_err(invalid)?;
    let min = version::minimum_required_version(&draft).map_err(|e| invalid(format!("{e:#}")))?;
    doc["cdiVersion"] = Value::String(min.to_string());
    let spec = from_json(&doc).map_err(invalid)?;
    let what = format!("the CDI spec built for lease {}", slice.lease);
    let edits = edits_of(check_doc(&spec, &doc), &slice.lease.to_string(), &what)?;
    Ok((spec, edits))
}

/// A spec as the crate's checks left it: its common edits and each device's, by name, in order.
pub(crate) struct Checked {
    common: Option<Edits>,
    devices: Vec<(String, Edits)>,
}

/// The crate's own checks of a spec, every one but its JSON-schema pass: the declared version (a known
/// one, and not older than the content needs), the spec's annotations, its common edits, and each
/// device's name and edits (env, device nodes with type/major/minor/mode, mounts, hooks), no name twice.
/// `Err` is the crate's reason on one line.
///
/// Why not the crate's `new_spec`: it also validates against CDI's JSON schema, which compiles the
/// schema in every process (80 % of a hook's instructions, callgrind), and calling it at all links the
/// `jsonschema` crate with its default HTTP and TLS stack (reqwest, hyper, rustls, aws-lc) into
/// migrun: a third of the binary's relocations and a constructor and destructor that run at every
/// hook's start and exit (docs/benchmarks.md, run L). What the schema adds beyond this is the shape,
/// which deserialising into the crate's types (unknown fields refused) already checks; the tests run
/// every spec the builder makes through the full `new_spec` too.
pub(crate) fn check(spec: &Spec) -> Result<Checked, String> {
    // The crate keeps a spec's fields to itself; its serialized form has them all.
    let doc = serde_json::to_value(spec).map_err(|e| e.to_string())?;
    check_doc(spec, &doc)
}

/// [`check`] of `spec` whose JSON form is `doc` (the builder has it already).
fn check_doc(spec: &Spec, doc: &Value) -> Result<Checked, String> {
    let declared = doc["cdiVersion"].as_str().unwrap_or_default();
    if !version::VALID_SPEC_VERSIONS.is_valid_version(declared) {
        return Err(format!("invalid version {declared}"));
    }
    let needed = version::minimum_required_version(spec).map_err(|e| format!("{e:#}"))?;
    if needed.is_greater_than(&version::VersionWrapper::new(declared)) {
        return Err(format!(
            "cdiVersion {declared} is too old for its content: it needs at least v{needed}"
        ));
    }
    let annotations =
        BTreeMap::<String, String>::deserialize(&doc["annotations"]).unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    validate_spec_annotations(kind, &annotations).map_err(|e| format!("{e:#}"))?;
    let common = match &spec.container_edits {
        Some(c) => {
            let c = Edits {
                container_edits: c.clone(),
            };
            c.validate().map_err(|e| format!("{e:#}"))?;
            Some(c)
        }
        None => None,
    };
    let blank = cdi_spec::Spec::default();
    let mut devices: Vec<(String, Edits)> = Vec::new();
    for v in doc["devices"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let d = CdiDevice::deserialize(v).map_err(|e| e.to_string())?;
        let dev = device::new_device(&blank, &d)
            .map_err(|e| format!("failed to add device {name}: {e:#}"))?;
        if devices.iter().any(|(n, _)| *n == name) {
            return Err(format!("invalid spec, multiple device {name}"));
        }
        devices.push((name, dev.edits()));
    }
    if devices.is_empty() {
        return Err("invalid spec, no devices".into());
    }
    Ok(Checked { common, devices })
}

/// [`check`]s `spec` and returns what CDI applies for device `name`: the common edits, then the
/// device's (the crate's own merge, in the order engines use).
fn check_built(spec: &Spec, name: &str, what: &str) -> Result<ContainerEdits, SpecError> {
    edits_of(check(spec), name, what)
}

/// What CDI applies for device `name` of a spec [`check`] passed (or the check's failure, as the
/// error about `what`).
fn edits_of(
    checked: Result<Checked, String>,
    name: &str,
    what: &str,
) -> Result<ContainerEdits, SpecError> {
    let invalid = |reason: String| SpecError::Invalid {
        what: what.to_string(),
        reason,
    };
    let Checked {
        common,
        mut devices,
    } = checked.map_err(invalid)?;
    let Some(i) = devices.iter().position(|(n, _)| n == name) else {
        return Err(SpecError::NoDevice {
            name: name.to_string(),
            names: devices
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let (_, device_edits) = devices.swap_remove(i);
    let mut all = Edits::new();
    let merge = |all: &mut Edits, e: Edits| all.append(e).map_err(|e| invalid(format!("{e:#}")));
    if let Some(common) = common {
        merge(&mut all, common)?;
    }
    merge(&mut all, device_edits)?;
    Ok(all.container_edits)
}

fn is_empty(e: &ContainerEdits) -> bool {
    e == &ContainerEdits::default()
}

/// The edits CDI applies for device `name` of `spec`, a spec read back: the spec's common edits, then
/// the device's, after the crate's checks ([`check`]).
pub fn edits_for(spec: &Spec, name: &str) -> Result<ContainerEdits, SpecError> {
    check_built(spec, name, "the CDI spec")
}

#[cfg(test)]
pub(crate) mod tests;
