//! Applies a CDI device's container edits to a bundle's config.json held as a `serde_json::Value` (idempotent, unknown fields kept); it must not read or write files.
//!
//! Why not the crate's `ContainerEdits::apply`: it works on oci-spec's `Spec`, and oci-spec 0.10
//! drops every field it does not model (annotations of newer runtime-spec versions, vendor
//! extensions) when config.json goes through it; it also appends hooks and cgroup rules on every
//! call, so applying twice would run the toolkit's hooks twice. So the crate converts each edit
//! (`fill_missing_info`, `to_oci`, the same steps its `apply` takes) and this module places the
//! result into the JSON, replacing by key instead of appending where CDI replaces, and skipping
//! what is already there where CDI appends.

use super::types::ContainerEdits;
use container_device_interface::container_edits::DeviceNode;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("config.json field {field} is {found}, not {want}; the bundle's config.json is malformed: recreate the container")]
    Shape {
        field: String,
        found: &'static str,
        want: &'static str,
    },
    #[error("CDI device node {path}: {reason}; the device node must exist on the host or be given with type, major and minor")]
    Node { path: String, reason: String },
    #[error("CDI edit {what} cannot be applied: {reason}; this is a migrun bug: please report it")]
    Edit { what: String, reason: String },
    #[error("CDI edits with {field} are not supported by migrun's apply (only env, deviceNodes, mounts and hooks); remove {field} from the spec")]
    Unsupported { field: String },
}

impl crate::exit::ExitCodeOf for ApplyError {
    fn exit_code(&self) -> i32 {
        match self {
            ApplyError::Unsupported { .. } => crate::exit::USAGE,
            _ => crate::exit::FAILED,
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shape(field: &str, found: &Value, want: &'static str) -> ApplyError {
    ApplyError::Shape {
        field: field.to_string(),
        found: kind(found),
        want,
    }
}

/// `v[key]` as an object, created when missing or null.
fn object<'a>(
    v: &'a mut Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a mut Map<String, Value>, ApplyError> {
    let slot = v.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => Ok(m),
        other => Err(shape(field, other, "an object")),
    }
}

/// `v[key]` as an array, created when missing or null.
fn array<'a>(
    v: &'a mut Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a mut Vec<Value>, ApplyError> {
    let slot = v.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => Ok(a),
        other => Err(shape(field, other, "an array")),
    }
}

fn to_value(what: &str, x: &impl Serialize) -> Result<Value, ApplyError> {
    serde_json::to_value(x).map_err(|e| ApplyError::Edit {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn edit_err(what: &str) -> impl FnOnce(anyhow::Error) -> ApplyError + '_ {
    move |e| ApplyError::Edit {
        what: what.to_string(),
        reason: format!("{e:#}"),
    }
}

/// The hook lists of the OCI runtime spec (CDI's `hookName` values); the crate checks these only when
/// validating a whole spec, and edits may come from elsewhere.
const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// `KEY=value` replaces an existing `KEY=…`, as CDI does; otherwise it is appended.
fn set_env(env: &mut Vec<Value>, entry: &str) {
    let key = entry.split('=').next().unwrap_or(entry);
    let same = |v: &Value| v.as_str().is_some_and(|s| s.split('=').next() == Some(key));
    match env.iter_mut().find(|v| same(v)) {
        Some(slot) => *slot = Value::String(entry.to_string()),
        None => env.push(Value::String(entry.to_string())),
    }
}

/// Pushes `item` unless an equal one is there: CDI appends these, and applying twice must equal once.
fn push_once(list: &mut Vec<Value>, item: Value) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The `process.user` uid/gid a device node without its own inherits when non-zero (CDI's rule).
fn user_ids(config: &Map<String, Value>) -> (Option<u64>, Option<u64>) {
    let user = config.get("process").and_then(|p| p.get("user"));
    let id = |k: &str| {
        user.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
    };
    (id("uid"), id("gid"))
}

fn apply_device_node(
    config: &mut Map<String, Value>,
    node: &super::types::DeviceNode,
) -> Result<(), ApplyError> {
    let mut dn = DeviceNode { node: node.clone() };
    let label = to_value("deviceNode", node)?["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    dn.fill_missing_info().map_err(|e| ApplyError::Node {
        path: label.clone(),
        reason: format!("{e:#}"),
    })?;
    let dev = dn.node.to_oci().map_err(edit_err(&label))?;
    let mut dev_json = to_value(&label, &dev)?;
    let (uid, gid) = user_ids(config);
    for (k, id) in [("uid", uid), ("gid", gid)] {
        if let (Some(id), Some(obj)) = (id, dev_json.as_object_mut()) {
            obj.entry(k).or_insert(Value::from(id));
        }
    }
    let linux = object(config, "linux", "linux")?;
    if matches!(dev.typ(), LinuxDeviceType::C | LinuxDeviceType::B) {
        let access = match dn.node.permissions.as_deref() {
            None | Some("") => "rwm",
            Some("none") => "",
            Some(p) => p,
        };
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(dev.typ()))
            .set_major(Some(dev.major()))
            .set_minor(Some(dev.minor()))
            .set_access(Some(access.to_string()));
        let resources = object(linux, "resources", "linux.resources")?;
        let rules = array(resources, "devices", "linux.resources.devices")?;
        push_once(rules, to_value(&label, &rule)?);
    }
    let devices = array(linux, "devices", "linux.devices")?;
    let same_path = |d: &Value| d.get("path") == dev_json.get("path");
    match devices.iter_mut().find(|d| same_path(d)) {
        Some(slot) => *slot = dev_json,
        None => devices.push(dev_json),
    }
    Ok(())
}

/// Applies `edits` (see [`super::spec::edits_for`]) to `config`, a bundle's config.json. Applying
/// the same edits again changes nothing; fields migrun does not touch, known or not, are kept.
/// On an error `config` may be partly changed: the caller writes it back only on `Ok`.
pub fn apply_edits(config: &mut Value, edits: &ContainerEdits) -> Result<(), ApplyError> {
    let as_json = to_value("containerEdits", edits)?;
    for field in ["netDevices", "intelRdt", "additionalGids"] {
        if as_json.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApplyError::Unsupported {
                field: field.to_string(),
            });
        }
    }
    let Value::Object(config) = config else {
        return Err(shape("(top level)", config, "an object"));
    };
    if let Some(env) = edits.env.as_ref().filter(|e| !e.is_empty()) {
        let process = object(config, "process", "process")?;
        let list = array(process, "env", "process.env")?;
        for entry in env {
            set_env(list, entry);
        }
    }
    for node in edits.device_nodes.iter().flatten() {
        apply_device_node(config, node)?;
    }
    for m in edits.mounts.iter().flatten() {
        let oci = to_value("mount", &m.to_oci().map_err(edit_err("mount"))?)?;
        let mounts = array(config, "mounts", "mounts")?;
        // CDI replaces a mount at the same destination.
        mounts.retain(|x| x.get("destination") != oci.get("destination"));
        mounts.push(oci);
    }
    for h in edits.hooks.iter().flatten() {
        let name = to_value("hook", h)?["hookName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !HOOK_NAMES.contains(&name.as_str()) {
            return Err(ApplyError::Edit {
                what: format!("hook {name:?}"),
                reason: "not an OCI hook name".into(),
            });
        }
        let oci = to_value("hook", &h.to_oci().map_err(edit_err("hook"))?)?;
        let hooks = object(config, "hooks", "hooks")?;
        let field = format!("hooks.{name}");
        push_once(array(hooks, &name, &field)?, oci);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
