//! OCI state/config parsing, spec modifiers (env, hooks, annotations) and hook entry points; it must not lose unknown JSON fields.
//!
//! Everything here works on `serde_json::Value`, never on `oci_spec::runtime::Spec`, because a typed
//! round trip drops the fields oci-spec does not know (and a runtime, an NVIDIA hook or a future spec
//! version may need them). oci-spec is used only to read the typed `State` a runtime hands a hook.
//!
//! The hook flows ([`precreate`], [`prestart`], [`poststop`], [`shim_create`]) take their lease
//! operations through [`LeaseOps`], so this module never opens NVML or the state dir itself: the
//! caller opens them lazily, only once a container has actually asked for a slice. A container that
//! asks for nothing costs one JSON parse.

use crate::alloc::ReleaseOutcome;
use crate::lease::{Holder, Lease, LeaseId};
use crate::profile::ProfileSpec;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Annotation a container sets to ask for a slice (`migrun.profile=3g.40gb`).
pub const ANNOTATION_PROFILE: &str = "migrun.profile";
/// Annotation that pins the request to one GPU (index or GPU-UUID).
pub const ANNOTATION_GPU: &str = "migrun.gpu";
/// Marker migrun writes into the config: the lease that belongs to this container.
pub const ANNOTATION_LEASE: &str = "migrun.lease";
/// Env a container sets to ask for a slice (`MIGRUN_PROFILE=3g.40gb`).
pub const ENV_PROFILE: &str = "MIGRUN_PROFILE";
/// Env that pins the request to one GPU.
pub const ENV_GPU: &str = "MIGRUN_GPU";
/// Marker env migrun writes: the lease id (also visible to the workload, for `migrun status`).
pub const ENV_LEASE: &str = "MIGRUN_LEASE";
/// The NVIDIA toolkit's device request.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// The value that tells the NVIDIA toolkit "no devices, act like runc".
pub const NVIDIA_NO_DEVICES: &str = "void";
/// NVIDIA env vars that grant MIG management devices; a container never brings its own.
pub const NVIDIA_MIG_ENV: [&str; 2] = ["NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES"];
/// migrun's own env, passed from the shim into the hooks it adds (runc gives hooks only `hook.env`).
pub const PASS_ENV: [&str; 5] = [
    "MIGRUN_SIMULATE",
    "MIGRUN_STATE_DIR",
    "MIGRUN_CONFIG",
    "MIGRUN_NVML_LIB",
    "MIGRUN_LOG",
];
/// Env naming the engine, set by the shim on the hooks it adds.
pub const ENV_ENGINE: &str = "MIGRUN_ENGINE";

/// Errors of the hook flows and of config rewriting.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "no {what} on stdin: the runtime must pipe it to `migrun hook {stage}` (see docs/hooks.md)"
    )]
    EmptyInput {
        what: &'static str,
        stage: &'static str,
    },
    #[error("bad OCI state JSON on stdin: {reason}; `migrun hook {stage}` expects the runtime-spec state ({{\"id\",\"pid\",\"bundle\",…}})")]
    BadState { stage: &'static str, reason: String },
    #[error("bundle {path} does not exist or is not a directory: {reason}; the runtime passed a bundle path that cannot be used")]
    MissingBundle { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}; check the bundle's config.json")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid OCI config {path}: {reason}; fix the container's config.json (runtime-spec)")]
    BadConfig { path: PathBuf, reason: String },
    #[error("bad slice request in {where_}: {reason}")]
    BadRequest { where_: String, reason: String },
    #[error("cannot write {path}: {source}; config.json was left as it was")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: crate::statedir::StateDirError,
    },
    #[error("{context}")]
    Lease {
        context: String,
        #[source]
        source: OpsError,
    },
    #[error("{path} names lease {lease}, which {reason}; refusing to start the container without its slice (recreate it)")]
    StaleMarker {
        path: PathBuf,
        lease: LeaseId,
        reason: String,
    },
    #[error("cannot write the modified config to stdout: {0}; the lease was released")]
    Emit(#[source] std::io::Error),
}

/// Exit codes for this module's errors: bad input is 2; lease errors defer to their cause (alloc, profile).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    match e.downcast_ref::<OciError>()? {
        OciError::EmptyInput { .. }
        | OciError::BadState { .. }
        | OciError::MissingBundle { .. }
        | OciError::ReadConfig { .. }
        | OciError::BadConfig { .. }
        | OciError::BadRequest { .. } => Some(crate::exit::USAGE),
        OciError::Lease { .. } => None,
        OciError::StaleMarker { .. } | OciError::WriteConfig { .. } | OciError::Emit(_) => {
            Some(crate::exit::FAILED)
        }
    }
}

/// The error type lease operations hand back (alloc's, state dir's, GPU's errors, kept as the cause).
pub type OpsError = Box<dyn std::error::Error + Send + Sync + 'static>;

// ---------------------------------------------------------------------------------------------
// Spec modifiers
// ---------------------------------------------------------------------------------------------

/// One small, idempotent change to an OCI config, applied to a JSON value so unknown fields survive.
pub trait SpecModifier: fmt::Debug {
    /// Apply the change; `Ok(true)` when the spec changed. Applying twice changes nothing the second time.
    fn apply(&self, spec: &mut Value) -> Result<bool, String>;
}

/// Apply modifiers in order; `Ok(true)` when any changed the spec.
pub fn apply_all(spec: &mut Value, mods: &[Box<dyn SpecModifier>]) -> Result<bool, String> {
    let mut changed = false;
    for m in mods {
        changed |= m.apply(spec)?;
    }
    Ok(changed)
}

fn root_obj(spec: &mut Value) -> Result<&mut Map<String, Value>, String> {
    spec.as_object_mut()
        .ok_or_else(|| "the config is not a JSON object".to_string())
}

/// `spec.<key>` as an object, created when absent.
fn child_obj<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, String> {
    if !parent.contains_key(key) {
        if !create {
            return Ok(None);
        }
        parent.insert(key.to_string(), Value::Object(Map::new()));
    }
    match parent.get_mut(key) {
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(Value::Null) if !create => Ok(None),
        Some(v @ Value::Null) => {
            *v = Value::Object(Map::new());
            Ok(v.as_object_mut())
        }
        _ => Err(format!("{path} is not a JSON object")),
    }
}

/// `process.env`, validated (an array of strings); created when `create`.
fn env_array(spec: &mut Value, create: bool) -> Result<Option<&mut Vec<Value>>, String> {
    let root = root_obj(spec)?;
    let Some(process) = child_obj(root, "process", "process", create)? else {
        return Ok(None);
    };
    if !process.contains_key("env") {
        if !create {
            return Ok(None);
        }
        process.insert("env".into(), Value::Array(Vec::new()));
    }
    match process.get_mut("env") {
        Some(Value::Array(a)) => {
            if a.iter().any(|v| !v.is_string()) {
                return Err("process.env holds a value that is not a string".into());
            }
            Ok(Some(a))
        }
        Some(Value::Null) if !create => Ok(None),
        Some(v @ Value::Null) => {
            *v = Value::Array(Vec::new());
            Ok(v.as_array_mut())
        }
        _ => Err("process.env is not an array of strings".into()),
    }
}

fn env_key(entry: &Value) -> &str {
    let s = entry.as_str().unwrap_or("");
    s.split_once('=').map_or(s, |(k, _)| k)
}

/// Set `NAME=value` in `process.env`, replacing every entry with that name (duplicates included:
/// a process sees the first, an NVIDIA hook may read another, so exactly one must remain).
#[derive(Debug, Clone)]
pub struct SetEnv {
    pub name: String,
    pub value: String,
}

impl SpecModifier for SetEnv {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let env = env_array(spec, true)?.expect("created");
        let want = format!("{}={}", self.name, self.value);
        let hits: Vec<usize> = (0..env.len())
            .filter(|&i| env_key(&env[i]) == self.name)
            .collect();
        if hits.len() == 1 && env[hits[0]].as_str() == Some(want.as_str()) {
            return Ok(false);
        }
        match hits.first() {
            None => env.push(Value::String(want)),
            Some(&first) => {
                env[first] = Value::String(want);
                for &i in hits[1..].iter().rev() {
                    env.remove(i);
                }
            }
        }
        Ok(true)
    }
}

/// Remove every `NAME=…` entry from `process.env`.
#[derive(Debug, Clone)]
pub struct RemoveEnv {
    pub name: String,
}

impl SpecModifier for RemoveEnv {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let Some(env) = env_array(spec, false)? else {
            return Ok(false);
        };
        let before = env.len();
        env.retain(|e| env_key(e) != self.name);
        Ok(env.len() != before)
    }
}

fn annotations(spec: &mut Value, create: bool) -> Result<Option<&mut Map<String, Value>>, String> {
    let root = root_obj(spec)?;
    let a = child_obj(root, "annotations", "annotations", create)?;
    if let Some(a) = &a {
        if a.values().any(|v| !v.is_string()) {
            return Err("annotations holds a value that is not a string".into());
        }
    }
    Ok(a)
}

/// Set one annotation.
#[derive(Debug, Clone)]
pub struct SetAnnotation {
    pub key: String,
    pub value: String,
}

impl SpecModifier for SetAnnotation {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let a = annotations(spec, true)?.expect("created");
        if a.get(&self.key).and_then(Value::as_str) == Some(self.value.as_str()) {
            return Ok(false);
        }
        a.insert(self.key.clone(), Value::String(self.value.clone()));
        Ok(true)
    }
}

/// Remove one annotation.
#[derive(Debug, Clone)]
pub struct RemoveAnnotation {
    pub key: String,
}

impl SpecModifier for RemoveAnnotation {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        Ok(annotations(spec, false)?.is_some_and(|a| a.shift_remove(&self.key).is_some()))
    }
}

/// Where in a stage's hook list a new hook goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPosition {
    /// Before every other hook (migrun must rewrite config.json before the NVIDIA hook reads it).
    First,
    Last,
}

/// Add migrun's hook for a stage, or bring an existing migrun hook there up to date in place.
/// Never leaves two migrun hooks in one stage.
#[derive(Debug, Clone)]
pub struct AddHook {
    /// runtime-spec stage name: `prestart`, `createRuntime`, `poststop`, …
    pub stage: String,
    /// `{"path","args","env","timeout"}`
    pub hook: Value,
    pub position: HookPosition,
}

impl AddHook {
    /// migrun's hook running `<bin> hook <stage>` with `env` (runc passes hooks nothing else).
    pub fn migrun(
        stage: &str,
        bin: &Path,
        env: &[(String, String)],
        timeout_s: Option<u64>,
        position: HookPosition,
    ) -> AddHook {
        let mut hook = Map::new();
        hook.insert("path".into(), Value::String(bin.display().to_string()));
        hook.insert(
            "args".into(),
            Value::Array(
                ["migrun", "hook", stage]
                    .iter()
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        );
        if !env.is_empty() {
            hook.insert(
                "env".into(),
                Value::Array(
                    env.iter()
                        .map(|(k, v)| Value::String(format!("{k}={v}")))
                        .collect(),
                ),
            );
        }
        if let Some(t) = timeout_s.filter(|&t| t > 0) {
            hook.insert("timeout".into(), Value::from(t));
        }
        AddHook {
            stage: stage.to_string(),
            hook: Value::Object(hook),
            position,
        }
    }
}

/// True for a hook entry that runs `migrun hook …` (any binary named migrun*, or argv[0] migrun*).
pub fn is_migrun_hook(hook: &Value) -> bool {
    let name = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|p| Path::new(p).file_name())
            .is_some_and(|f| f.to_string_lossy().starts_with("migrun"))
    };
    let args = hook.get("args").and_then(Value::as_array);
    let sub = args.and_then(|a| a.get(1)).and_then(Value::as_str);
    sub == Some("hook") && (name(hook.get("path")) || name(args.and_then(|a| a.first())))
}

impl SpecModifier for AddHook {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let root = root_obj(spec)?;
        let hooks = child_obj(root, "hooks", "hooks", true)?.expect("created");
        let list = hooks
            .entry(self.stage.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if list.is_null() {
            *list = Value::Array(Vec::new());
        }
        let list = list
            .as_array_mut()
            .ok_or_else(|| format!("hooks.{} is not an array", self.stage))?;
        let ours: Vec<usize> = (0..list.len())
            .filter(|&i| is_migrun_hook(&list[i]))
            .collect();
        if ours.len() == 1 && list[ours[0]] == self.hook {
            return Ok(false);
        }
        match ours.first() {
            Some(&first) => {
                list[first] = self.hook.clone();
                for &i in ours[1..].iter().rev() {
                    list.remove(i);
                }
            }
            None => match self.position {
                HookPosition::First => list.insert(0, self.hook.clone()),
                HookPosition::Last => list.push(self.hook.clone()),
            },
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading configs and requests
// ---------------------------------------------------------------------------------------------

/// Read-only view of the parts of a config migrun looks at.
fn env_lookup<'a>(spec: &'a Value, name: &str) -> Vec<&'a str> {
    spec.pointer("/process/env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|e| e.split_once('='))
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}

fn env_has(spec: &Value, name: &str) -> bool {
    spec.pointer("/process/env")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|e| env_key(e) == name))
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// Check the shape of the fields migrun reads or writes, so a bad config is one clear error up front.
pub fn validate_config(spec: &Value) -> Result<(), String> {
    let root = spec
        .as_object()
        .ok_or_else(|| "the config is not a JSON object".to_string())?;
    if let Some(p) = root.get("process").filter(|v| !v.is_null()) {
        let p = p
            .as_object()
            .ok_or_else(|| "process is not a JSON object".to_string())?;
        if let Some(env) = p.get("env").filter(|v| !v.is_null()) {
            let ok = env
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string));
            if !ok {
                return Err("process.env is not an array of strings".into());
            }
        }
    }
    if let Some(a) = root.get("annotations").filter(|v| !v.is_null()) {
        let ok = a
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !ok {
            return Err("annotations is not an object of strings".into());
        }
    }
    if let Some(h) = root.get("hooks").filter(|v| !v.is_null()) {
        let h = h
            .as_object()
            .ok_or_else(|| "hooks is not a JSON object".to_string())?;
        for (stage, list) in h {
            if !list.is_null() && !list.is_array() {
                return Err(format!("hooks.{stage} is not an array"));
            }
        }
    }
    Ok(())
}

/// What a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub profile: ProfileSpec,
    /// GPU index or GPU-UUID, as given.
    pub gpu: Option<String>,
    /// Where the request came from, for messages (`annotation migrun.profile`).
    pub source: String,
}

fn one_value(
    spec: &Value,
    annotation_key: &str,
    env_name: &str,
) -> Result<Option<(String, String)>, OciError> {
    let from_annotation = annotation(spec, annotation_key).map(str::to_string);
    let from_env: Vec<&str> = env_lookup(spec, env_name);
    let mut distinct: Vec<&str> = from_env.clone();
    distinct.dedup();
    if distinct.len() > 1 {
        return Err(OciError::BadRequest {
            where_: format!("env {env_name}"),
            reason: format!(
                "set {} times with different values ({}); set it once",
                from_env.len(),
                distinct.join(", ")
            ),
        });
    }
    match (from_annotation, distinct.first()) {
        (Some(a), Some(e)) if a.trim() != e.trim() => Err(OciError::BadRequest {
            where_: format!("annotation {annotation_key} and env {env_name}"),
            reason: format!("they disagree ({a:?} vs {e:?}); set only one of them"),
        }),
        (Some(a), _) => Ok(Some((a, format!("annotation {annotation_key}")))),
        (None, Some(e)) => Ok(Some((e.to_string(), format!("env {env_name}")))),
        (None, None) => Ok(None),
    }
}

/// The slice a config asks for: annotation `migrun.profile` or env `MIGRUN_PROFILE`; `None` when it asks for nothing.
pub fn request_of(spec: &Value) -> Result<Option<Request>, OciError> {
    let Some((profile, source)) = one_value(spec, ANNOTATION_PROFILE, ENV_PROFILE)? else {
        return Ok(None);
    };
    let profile: ProfileSpec =
        profile
            .parse()
            .map_err(|e: crate::profile::ProfileError| OciError::BadRequest {
                where_: source.clone(),
                reason: e.to_string(),
            })?;
    let gpu = one_value(spec, ANNOTATION_GPU, ENV_GPU)?.map(|(g, _)| g.trim().to_string());
    Ok(Some(Request {
        profile,
        gpu,
        source,
    }))
}

/// The lease marker migrun wrote into a config, if any (annotation first, then env).
pub fn lease_marker(spec: &Value) -> Result<Option<LeaseId>, OciError> {
    let Some((v, source)) = one_value(spec, ANNOTATION_LEASE, ENV_LEASE)? else {
        return Ok(None);
    };
    v.trim()
        .parse()
        .map(Some)
        .map_err(|_| OciError::BadRequest {
            where_: source,
            reason: format!("{v:?} is not a lease id"),
        })
}

/// Would the NVIDIA toolkit hand this container GPUs on its own (migrun did not ask)?
///
/// True when the config carries NVIDIA_VISIBLE_DEVICES (any value but `void`), a MIG management
/// variable, or looks like a legacy CUDA image (CUDA_VERSION without NVIDIA_REQUIRE_CUDA), which the
/// toolkit treats as "all GPUs" when NVIDIA_VISIBLE_DEVICES is unset. A forged lease marker also counts.
pub fn needs_guard(spec: &Value) -> bool {
    let nvd = env_lookup(spec, NVIDIA_VISIBLE_DEVICES);
    let nvd_grants = nvd.len() > 1 || nvd.first().is_some_and(|v| *v != NVIDIA_NO_DEVICES);
    let legacy_cuda =
        nvd.is_empty() && env_has(spec, "CUDA_VERSION") && !env_has(spec, "NVIDIA_REQUIRE_CUDA");
    nvd_grants
        || legacy_cuda
        || NVIDIA_MIG_ENV.iter().any(|n| env_has(spec, n))
        || env_has(spec, ENV_LEASE)
        || annotation(spec, ANNOTATION_LEASE).is_some()
}

fn remove_markers() -> Vec<Box<dyn SpecModifier>> {
    vec![
        Box::new(RemoveEnv {
            name: ENV_LEASE.into(),
        }),
        Box::new(RemoveAnnotation {
            key: ANNOTATION_LEASE.into(),
        }),
    ]
}

fn remove_mig_env() -> Vec<Box<dyn SpecModifier>> {
    NVIDIA_MIG_ENV
        .iter()
        .map(|n| {
            Box::new(RemoveEnv {
                name: n.to_string(),
            }) as Box<dyn SpecModifier>
        })
        .collect()
}

/// For a container that asked for nothing: no GPU through the NVIDIA toolkit, no forged marker.
pub fn guard_modifiers() -> Vec<Box<dyn SpecModifier>> {
    let mut m: Vec<Box<dyn SpecModifier>> = vec![Box::new(SetEnv {
        name: NVIDIA_VISIBLE_DEVICES.into(),
        value: NVIDIA_NO_DEVICES.into(),
    })];
    m.extend(remove_mig_env());
    m.extend(remove_markers());
    m
}

/// For a container holding `lease`: exactly its MIG device, and the marker poststop reads.
pub fn lease_modifiers(lease: &Lease) -> Vec<Box<dyn SpecModifier>> {
    let mut m: Vec<Box<dyn SpecModifier>> = vec![Box::new(SetEnv {
        name: NVIDIA_VISIBLE_DEVICES.into(),
        value: lease.mig_uuid.clone(),
    })];
    m.extend(remove_mig_env());
    m.push(Box::new(SetEnv {
        name: ENV_LEASE.into(),
        value: lease.id.to_string(),
    }));
    m.push(Box::new(SetAnnotation {
        key: ANNOTATION_LEASE.into(),
        value: lease.id.to_string(),
    }));
    m
}

/// A bundle's config.json, read once: the bytes as they were and the parsed value.
#[derive(Debug, Clone)]
pub struct BundleConfig {
    pub path: PathBuf,
    pub original: Vec<u8>,
    pub spec: Value,
    mode: u32,
}

impl BundleConfig {
    /// Read and validate `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<BundleConfig, OciError> {
        let meta = std::fs::metadata(bundle).map_err(|e| OciError::MissingBundle {
            path: bundle.into(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(OciError::MissingBundle {
                path: bundle.into(),
                reason: "not a directory".into(),
            });
        }
        let path = bundle.join("config.json");
        let original = std::fs::read(&path).map_err(|source| OciError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        let spec = parse_config(&original, &path)?;
        Ok(BundleConfig {
            path,
            original,
            spec,
            mode,
        })
    }

    /// Apply modifiers to a copy; `Ok(None)` when nothing changes (the file stays byte-identical).
    pub fn modified(&self, mods: &[Box<dyn SpecModifier>]) -> Result<Option<Value>, OciError> {
        let mut spec = self.spec.clone();
        let changed = apply_all(&mut spec, mods).map_err(|reason| OciError::BadConfig {
            path: self.path.clone(),
            reason,
        })?;
        Ok(changed.then_some(spec))
    }

    /// Atomically replace config.json with `spec` (temp file + rename: never half-written), keeping its mode.
    pub fn write(&self, spec: &Value) -> Result<(), OciError> {
        let bytes = serde_json::to_vec(spec).expect("a Value always serializes");
        crate::statedir::write_atomic(&self.path, &bytes, self.mode).map_err(|source| {
            OciError::WriteConfig {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// Parse and validate config JSON.
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<Value, OciError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OciError::BadConfig {
            path: path.into(),
            reason: "it is empty".into(),
        });
    }
    let spec: Value = serde_json::from_slice(bytes).map_err(|e| OciError::BadConfig {
        path: path.into(),
        reason: e.to_string(),
    })?;
    validate_config(&spec).map_err(|reason| OciError::BadConfig {
        path: path.into(),
        reason,
    })?;
    Ok(spec)
}

/// `s` with control characters escaped: serde quotes input strings raw into its messages, and a
/// newline there would split the one-line error a hook logs.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The state a runtime hands a hook (runtime-spec), checked for what migrun needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookState {
    pub id: String,
    pub pid: Option<u32>,
    pub bundle: PathBuf,
    pub annotations: HashMap<String, String>,
}

/// Parse the state JSON a runtime pipes to a hook.
pub fn parse_state(bytes: &[u8], stage: &'static str) -> Result<HookState, OciError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OciError::EmptyInput {
            what: "container state JSON",
            stage,
        });
    }
    let bad = |reason: String| OciError::BadState {
        stage,
        reason: one_line(&reason),
    };
    let state: oci_spec::runtime::State =
        serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if state.id().is_empty() {
        return Err(bad("it has no container \"id\"".into()));
    }
    if state.bundle().as_os_str().is_empty() || !state.bundle().is_absolute() {
        return Err(bad(format!(
            "\"bundle\" must be an absolute path, got {:?}",
            state.bundle()
        )));
    }
    let pid = match *state.pid() {
        Some(p) if p > 0 => Some(p as u32),
        _ => None,
    };
    Ok(HookState {
        id: state.id().clone(),
        pid,
        bundle: state.bundle().clone(),
        annotations: state.annotations().clone().unwrap_or_default(),
    })
}

/// Guess the engine from the annotations it puts on every container (for the holder record).
pub fn engine_from_annotations(a: &HashMap<String, String>) -> &'static str {
    if a.get("io.container.manager").map(String::as_str) == Some("libpod")
        || a.keys().any(|k| k.starts_with("io.podman."))
    {
        "podman"
    } else if a.keys().any(|k| k.starts_with("io.kubernetes.cri-o.")) {
        "cri-o"
    } else if a.keys().any(|k| k.starts_with("io.kubernetes.cri.")) {
        "containerd"
    } else {
        "runc"
    }
}

// ---------------------------------------------------------------------------------------------
// Hook flows
// ---------------------------------------------------------------------------------------------

/// The lease operations a hook needs; the real one opens the state dir and the GPU backend lazily.
pub trait LeaseOps {
    /// Allocate a slice for `req`, held by `holder`.
    fn allocate(&mut self, req: &Request, holder: Holder) -> Result<Lease, OpsError>;
    /// One lease by id.
    fn lease(&mut self, id: LeaseId) -> Result<Option<Lease>, OpsError>;
    /// The lease a container already holds (a retried `create`).
    fn lease_of_container(&mut self, id: &str) -> Result<Option<Lease>, OpsError>;
    fn set_holder(&mut self, id: LeaseId, holder: Holder) -> Result<(), OpsError>;
    /// Release by lease id.
    fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError>;
    /// Release what container `id` holds (idempotent).
    fn release_container(&mut self, id: &str) -> Result<ReleaseOutcome, OpsError>;
}

/// What a hook did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The container asked for nothing and carried nothing to strip: nothing was touched.
    PassThrough,
    /// The container asked for nothing; NVIDIA device variables or forged markers were neutralised.
    Guarded,
    /// A lease was made (or found, for a retried create) and written into the config.
    Leased {
        lease: LeaseId,
        mig_uuid: String,
        reused: bool,
    },
    /// A lease made earlier (precreate or shim) was handed to the container now that its pid is known.
    Adopted {
        lease: LeaseId,
        mig_uuid: String,
    },
    Released(ReleaseOutcome),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::PassThrough => write!(f, "no slice requested; config untouched"),
            Outcome::Guarded => write!(
                f,
                "no slice requested; NVIDIA device variables set to {NVIDIA_NO_DEVICES} and foreign migrun markers removed"
            ),
            Outcome::Leased {
                lease,
                mig_uuid,
                reused,
            } => write!(
                f,
                "{} lease {lease}: NVIDIA_VISIBLE_DEVICES={mig_uuid}",
                if *reused { "reused" } else { "allocated" }
            ),
            Outcome::Adopted { lease, mig_uuid } => {
                write!(f, "lease {lease} ({mig_uuid}) now held by the container")
            }
            Outcome::Released(r) => write!(f, "{r}"),
        }
    }
}

fn lease_err(context: impl Into<String>) -> impl FnOnce(OpsError) -> OciError {
    let context = context.into();
    move |source| OciError::Lease { context, source }
}

/// Release a lease we just made because a later step failed; the original error wins.
fn undo(ops: &mut dyn LeaseOps, lease: &Lease, err: OciError) -> OciError {
    if let Err(e) = ops.release(lease.id) {
        tracing::error!(
            lease = lease.id,
            "could not release lease after a failure: {e}"
        );
    } else {
        tracing::info!(
            lease = lease.id,
            "released lease {} after a failure",
            lease.id
        );
    }
    err
}

/// podman's precreate stage: config JSON in, modified config out.
///
/// The lease is held by `holder` (the engine process) until prestart hands it to the container;
/// poststop finds it through the `migrun.lease` marker in the bundle's config.json, because podman's
/// poststop state does not carry annotations added here.
pub fn precreate(
    input: &[u8],
    ops: &mut dyn LeaseOps,
    holder: Holder,
    emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Outcome, OciError> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(OciError::EmptyInput {
            what: "container config JSON",
            stage: "precreate",
        });
    }
    let path = Path::new("<stdin>");
    let spec = parse_config(input, path)?;
    let req = request_of(&spec)?;
    let Some(req) = req else {
        if !needs_guard(&spec) {
            emit(input).map_err(OciError::Emit)?;
            return Ok(Outcome::PassThrough);
        }
        let mut spec = spec;
        apply_all(&mut spec, &guard_modifiers()).map_err(|reason| OciError::BadConfig {
            path: path.into(),
            reason,
        })?;
        emit(&serde_json::to_vec(&spec).expect("serializes")).map_err(OciError::Emit)?;
        return Ok(Outcome::Guarded);
    };
    let lease = ops.allocate(&req, holder).map_err(lease_err(format!(
        "cannot allocate {} ({})",
        req.profile, req.source
    )))?;
    let mut spec = spec;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    if let Err(reason) = apply_all(&mut spec, &mods) {
        return Err(undo(
            ops,
            &lease,
            OciError::BadConfig {
                path: path.into(),
                reason,
            },
        ));
    }
    if let Err(e) = emit(&serde_json::to_vec(&spec).expect("serializes")) {
        return Err(undo(ops, &lease, OciError::Emit(e)));
    }
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused: false,
    })
}

fn container_holder(state: &HookState, engine: &str) -> Holder {
    Holder::Container {
        id: state.id.clone(),
        engine: engine.to_string(),
        pid: state
            .pid
            .and_then(|p| crate::lease::process_start_time(p).map(|t| (p, t))),
    }
}

/// May this container take over lease `l` named by a marker in its config?
///
/// Markers are written by migrun (precreate and the shim strip any the container brought), but a
/// plain-runc or CRI-O config could still carry a forged one, so the lease must be this container's
/// already, or be podman's precreate lease still held by the podman process.
fn marker_fits(l: &Lease, container: &str, engine: &str) -> Result<(), String> {
    match &l.holder {
        Holder::Container { id, .. } if id == container => Ok(()),
        Holder::Container { id, .. } => Err(format!("is held by container {id}")),
        Holder::Process { .. } if engine == "podman" => Ok(()),
        Holder::Process { pid, .. } => Err(format!(
            "is held by process {pid}, and only podman's precreate hands a lease over this way"
        )),
        Holder::Launcher { .. } => Err("is held by the docker launcher".into()),
        Holder::Manual => Err("is a manual lease (migrun alloc)".into()),
    }
}

/// OCI prestart / createRuntime: allocate (or adopt the lease precreate or the shim made) and rewrite
/// `<bundle>/config.json`, so that a later prestart hook (nvidia-container-runtime-hook) mounts that MIG device.
pub fn prestart(
    state_json: &[u8],
    ops: &mut dyn LeaseOps,
    engine: Option<&str>,
) -> Result<Outcome, OciError> {
    let state = parse_state(state_json, "prestart")?;
    let cfg = BundleConfig::load(&state.bundle)?;
    // runc copies the config's annotations into the state; look at both in case a runtime does not.
    let engine = engine.unwrap_or_else(|| {
        let mut a = state.annotations.clone();
        if let Some(m) = cfg.spec.get("annotations").and_then(Value::as_object) {
            for (k, v) in m {
                a.entry(k.clone())
                    .or_insert_with(|| v.as_str().unwrap_or("").to_string());
            }
        }
        engine_from_annotations(&a)
    });
    let req = request_of(&cfg.spec)?;
    let marker = lease_marker(&cfg.spec)?;

    if let (Some(id), Some(_)) = (marker, &req) {
        // Made by precreate or the shim: check it, then hand it to the container (now we know its pid).
        let stale = |reason: String| OciError::StaleMarker {
            path: cfg.path.clone(),
            lease: id,
            reason,
        };
        let l = ops
            .lease(id)
            .map_err(lease_err(format!("cannot read lease {id}")))?
            .ok_or_else(|| stale("does not exist (released or collected)".into()))?;
        marker_fits(&l, &state.id, engine).map_err(stale)?;
        if env_lookup(&cfg.spec, NVIDIA_VISIBLE_DEVICES) != [l.mig_uuid.as_str()] {
            return Err(stale(format!(
                "is {} but NVIDIA_VISIBLE_DEVICES does not name it",
                l.mig_uuid
            )));
        }
        let holder = container_holder(&state, engine);
        if l.holder != holder {
            ops.set_holder(id, holder).map_err(lease_err(format!(
                "cannot hand lease {id} to container {}",
                state.id
            )))?;
        }
        return Ok(Outcome::Adopted {
            lease: id,
            mig_uuid: l.mig_uuid,
        });
    }

    let Some(req) = req else {
        return guard_bundle(&cfg);
    };
    let (lease, reused) = obtain(ops, &req, &state.id, container_holder(&state, engine))?;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    write_or_undo(ops, &cfg, &mods, &lease, reused)?;
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

/// The lease this container already holds (a retried create), or a new one.
fn obtain(
    ops: &mut dyn LeaseOps,
    req: &Request,
    container: &str,
    holder: Holder,
) -> Result<(Lease, bool), OciError> {
    let existing = ops
        .lease_of_container(container)
        .map_err(lease_err(format!(
            "cannot read the leases of container {container}"
        )))?;
    if let Some(l) = existing {
        return Ok((l, true));
    }
    let l = ops.allocate(req, holder).map_err(lease_err(format!(
        "cannot allocate {} for container {container} ({})",
        req.profile, req.source
    )))?;
    Ok((l, false))
}

fn write_or_undo(
    ops: &mut dyn LeaseOps,
    cfg: &BundleConfig,
    mods: &[Box<dyn SpecModifier>],
    lease: &Lease,
    reused: bool,
) -> Result<(), OciError> {
    let res = cfg
        .modified(mods)
        .and_then(|m| m.map_or(Ok(()), |spec| cfg.write(&spec)));
    match res {
        Ok(()) => Ok(()),
        Err(e) if reused => Err(e),
        Err(e) => Err(undo(ops, lease, e)),
    }
}

fn guard_bundle(cfg: &BundleConfig) -> Result<Outcome, OciError> {
    if !needs_guard(&cfg.spec) {
        return Ok(Outcome::PassThrough);
    }
    match cfg.modified(&guard_modifiers())? {
        Some(spec) => {
            cfg.write(&spec)?;
            Ok(Outcome::Guarded)
        }
        None => Ok(Outcome::PassThrough),
    }
}

/// OCI poststop: release this container's lease. Idempotent; a container that never had one is fine.
///
/// It looks at `<bundle>/config.json` first, so a container that asked for nothing costs no state-dir access.
pub fn poststop(state_json: &[u8], ops: &mut dyn LeaseOps) -> Result<Outcome, OciError> {
    let state = parse_state(state_json, "poststop")?;
    // The bundle may already be gone (an engine that cleans up early): then ask by container id.
    let cfg = match BundleConfig::load(&state.bundle) {
        Ok(c) => Some(c),
        Err(OciError::MissingBundle { .. }) => None,
        Err(OciError::ReadConfig { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    let (marker, asked) = match &cfg {
        Some(c) => (
            lease_marker(&c.spec).ok().flatten(),
            // A malformed request still may have left a lease behind (timeout): look it up by id.
            !matches!(request_of(&c.spec), Ok(None)),
        ),
        None => (None, true),
    };
    if marker.is_none() && !asked {
        return Ok(Outcome::PassThrough);
    }
    let out = ops.release_container(&state.id).map_err(lease_err(format!(
        "cannot release the lease of container {}",
        state.id
    )))?;
    if out != ReleaseOutcome::NoLease {
        return Ok(Outcome::Released(out));
    }
    // Allocated by precreate and never handed over (the container failed before prestart).
    if let Some(id) = marker {
        if let Some(l) = ops
            .lease(id)
            .map_err(lease_err(format!("cannot read lease {id}")))?
        {
            match &l.holder {
                Holder::Process { .. } => {
                    let out = ops
                        .release(id)
                        .map_err(lease_err(format!("cannot release lease {id}")))?;
                    return Ok(Outcome::Released(out));
                }
                other => tracing::warn!(
                    lease = id,
                    "config.json names lease {id} but it is held by {other:?}; leaving it alone"
                ),
            }
        }
    }
    Ok(Outcome::Released(ReleaseOutcome::NoLease))
}

/// What the shim writes into the hooks it adds to a bundle.
#[derive(Debug, Clone)]
pub struct ShimHooks {
    /// The migrun binary the hooks run (the real file, not the `migrun-runtime` name).
    pub bin: PathBuf,
    /// `hook.env`: migrun's own settings (state dir, simulator, config) plus MIGRUN_ENGINE.
    pub env: Vec<(String, String)>,
    pub timeout_s: Option<u64>,
}

/// True when the shim can hand the bundle to runc untouched: its config asks for no slice and needs no guard
/// (what [`shim_create`] would answer with `Outcome::PassThrough`). The shim's fast path asks this before migrun
/// parses its command line, because most containers on a host ask for nothing. Any doubt (unreadable or
/// malformed config, a malformed request) answers `false`, and [`shim_create`] then reports it.
pub fn shim_passes_through(bundle: &Path) -> bool {
    BundleConfig::load(bundle)
        .is_ok_and(|cfg| matches!(request_of(&cfg.spec), Ok(None)) && !needs_guard(&cfg.spec))
}

/// The shim's `create`: allocate for a container that asks, and rewrite its bundle (env, lease marker,
/// a prestart hook that records the container's pid, a poststop hook that releases the slice).
pub fn shim_create(
    bundle: &Path,
    container: &str,
    engine: &str,
    ops: &mut dyn LeaseOps,
    hooks: &ShimHooks,
) -> Result<Outcome, OciError> {
    let cfg = BundleConfig::load(bundle)?;
    let Some(req) = request_of(&cfg.spec)? else {
        return guard_bundle(&cfg);
    };
    let holder = Holder::Container {
        id: container.to_string(),
        engine: engine.to_string(),
        pid: None,
    };
    let (lease, reused) = obtain(ops, &req, container, holder)?;
    let mut mods = remove_markers();
    mods.extend(lease_modifiers(&lease));
    mods.push(Box::new(AddHook::migrun(
        "prestart",
        &hooks.bin,
        &hooks.env,
        hooks.timeout_s,
        HookPosition::First,
    )));
    mods.push(Box::new(AddHook::migrun(
        "poststop",
        &hooks.bin,
        &hooks.env,
        hooks.timeout_s,
        HookPosition::Last,
    )));
    write_or_undo(ops, &cfg, &mods, &lease, reused)?;
    Ok(Outcome::Leased {
        lease: lease.id,
        mig_uuid: lease.mig_uuid,
        reused,
    })
}

// ---------------------------------------------------------------------------------------------
// Holder liveness for gc (the engine arms behind `alloc::HolderProbe`)
// ---------------------------------------------------------------------------------------------

/// Does runc (or a runc under an engine) still keep state for container `id` under `root`?
fn runc_state_exists(root: &Path, id: &str) -> bool {
    root.join(id).join("state.json").is_file()
}

/// Is the container still known to its engine? `None` when migrun cannot tell.
///
/// Only cheap, positive evidence is given: runc's state for the container in the default runtime
/// roots. Absence proves nothing (the engine may use another `--root`, as test engines and
/// rootless setups do), so then the answer is `None` and gc falls back to the container's init pid,
/// which prestart records for every hook-made lease. Nothing is spawned: gc runs this for every
/// container lease on every allocation. Docker's arm belongs to the launcher (`engine::docker`).
pub fn container_alive(id: &str, engine: &str) -> Option<bool> {
    // Ids become path components below: never let one walk out of the runtime root.
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return None;
    }
    let found = match engine {
        // podman and CRI-O run runc with its default root.
        "runc" | "podman" | "cri-o" => runc_state_exists(Path::new("/run/runc"), id),
        // /run/containerd/runc/<namespace>/<id>
        "containerd" => std::fs::read_dir("/run/containerd/runc")
            .map(|nss| nss.flatten().any(|ns| runc_state_exists(&ns.path(), id)))
            .unwrap_or(false),
        _ => false,
    };
    found.then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Placement;
    use crate::lease::LeaseState;
    use serde_json::json;

    /// A config with unknown fields at several levels, pretty-printed like engines write it.
    fn sample() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "x-top-unknown": {"nested": [1, 2, {"deep": true}]},
            "process": {
                "terminal": false,
                "x-proc-unknown": 7,
                "user": {"uid": 0, "gid": 0, "x-user-unknown": "u"},
                "args": ["sh"],
                "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all", "HOME=/root", "NVIDIA_VISIBLE_DEVICES=0"],
                "cwd": "/"
            },
            "root": {"path": "rootfs", "x-root-unknown": null},
            "hooks": {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"], "x-hook-unknown": 1}]},
            "linux": {"namespaces": [{"type": "pid"}], "x-linux-unknown": {"a": "b"}}
        })
    }

    fn lease(id: LeaseId, uuid: &str, holder: Holder) -> Lease {
        Lease {
            id,
            holder,
            uid: 0,
            gpu_index: 0,
            gpu_uuid: "GPU-0".into(),
            gi: 1,
            ci: 0,
            profile_id: 19,
            profile: "1g.10gb".into(),
            placement: Placement { start: 0, size: 1 },
            mig_uuid: uuid.into(),
            created: true,
            keep: false,
            state: LeaseState::Active,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn env_of(v: &Value) -> Vec<String> {
        v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn modifiers_are_idempotent_and_keep_unknown_fields() {
        let l = lease(7, "MIG-aaaa", Holder::Manual);
        let mut mods = lease_modifiers(&l);
        mods.push(Box::new(AddHook::migrun(
            "poststop",
            Path::new("/usr/bin/migrun"),
            &[("MIGRUN_STATE_DIR".into(), "/run/migrun".into())],
            Some(30),
            HookPosition::Last,
        )));
        mods.push(Box::new(AddHook::migrun(
            "prestart",
            Path::new("/usr/bin/migrun"),
            &[],
            None,
            HookPosition::First,
        )));
        let mut once = sample();
        assert!(apply_all(&mut once, &mods).unwrap());
        let mut twice = once.clone();
        assert!(
            !apply_all(&mut twice, &mods).unwrap(),
            "second apply changes nothing"
        );
        assert_eq!(once, twice);

        // Exactly one NVIDIA_VISIBLE_DEVICES, at the first one's place, naming the lease.
        assert_eq!(
            env_of(&once),
            [
                "PATH=/bin",
                "NVIDIA_VISIBLE_DEVICES=MIG-aaaa",
                "HOME=/root",
                "MIGRUN_LEASE=7"
            ]
        );
        assert_eq!(once["annotations"]["migrun.lease"], "7");
        // migrun's prestart hook runs before the NVIDIA hook, which is kept with its unknown field.
        let pre = once["hooks"]["prestart"].as_array().unwrap();
        assert_eq!(pre.len(), 2);
        assert!(is_migrun_hook(&pre[0]));
        assert_eq!(pre[1]["x-hook-unknown"], 1);
        assert_eq!(
            once["hooks"]["poststop"][0]["env"][0],
            "MIGRUN_STATE_DIR=/run/migrun"
        );
        assert_eq!(once["hooks"]["poststop"][0]["timeout"], 30);
        // Unknown fields at every level survive, in order.
        let mut expect = sample();
        for k in ["process", "annotations", "hooks"] {
            expect[k] = once[k].clone();
        }
        expect["process"]["env"] = sample()["process"]["env"].clone();
        let mut got = once.clone();
        got["process"]["env"] = sample()["process"]["env"].clone();
        assert_eq!(got, expect);
        assert_eq!(once["x-top-unknown"]["nested"][2]["deep"], true);
        assert_eq!(once["process"]["user"]["x-user-unknown"], "u");
        assert_eq!(once["linux"]["x-linux-unknown"]["a"], "b");
        assert!(once["root"]
            .as_object()
            .unwrap()
            .contains_key("x-root-unknown"));
        let keys: Vec<&String> = once.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["ociVersion", "x-top-unknown", "process"]);
    }

    #[test]
    fn a_changed_migrun_hook_is_replaced_not_duplicated() {
        let mut spec = json!({"hooks": {"poststop": [
            {"path": "/old/migrun", "args": ["migrun", "hook", "poststop"]},
            {"path": "/bin/other", "args": ["other"]},
            {"path": "/x/migrun-runtime", "args": ["migrun", "hook", "poststop"]}
        ]}});
        let add = AddHook::migrun(
            "poststop",
            Path::new("/usr/bin/migrun"),
            &[],
            None,
            HookPosition::Last,
        );
        assert!(add.apply(&mut spec).unwrap());
        let list = spec["hooks"]["poststop"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["path"], "/usr/bin/migrun");
        assert_eq!(list[1]["path"], "/bin/other");
        assert!(!add.apply(&mut spec).unwrap());
    }

    #[test]
    fn env_and_annotation_edits_on_missing_and_bad_shapes() {
        let mut spec = json!({"ociVersion": "1.0.2"});
        assert!(!RemoveEnv { name: "X".into() }.apply(&mut spec).unwrap());
        assert!(!RemoveAnnotation { key: "k".into() }
            .apply(&mut spec)
            .unwrap());
        assert_eq!(
            spec,
            json!({"ociVersion": "1.0.2"}),
            "removing nothing adds nothing"
        );
        assert!(SetEnv {
            name: "X".into(),
            value: "1".into()
        }
        .apply(&mut spec)
        .unwrap());
        assert_eq!(spec["process"]["env"], json!(["X=1"]));
        let mut bad = json!({"process": {"env": "X=1"}});
        assert!(SetEnv {
            name: "X".into(),
            value: "1".into()
        }
        .apply(&mut bad)
        .is_err());
        let mut bad = json!([1]);
        assert!(SetAnnotation {
            key: "k".into(),
            value: "v".into()
        }
        .apply(&mut bad)
        .is_err());
    }

    #[test]
    fn requests_from_annotation_or_env() {
        let r = request_of(&json!({"annotations": {"migrun.profile": "3g.40gb"}}))
            .unwrap()
            .unwrap();
        assert_eq!(r.profile, "3g.40gb".parse().unwrap());
        assert_eq!(r.source, "annotation migrun.profile");
        let r =
            request_of(&json!({"process": {"env": ["MIGRUN_PROFILE=1g.10gb", "MIGRUN_GPU=1"]}}))
                .unwrap()
                .unwrap();
        assert_eq!(r.profile, "1g.10gb".parse().unwrap());
        assert_eq!(r.gpu.as_deref(), Some("1"));
        assert_eq!(request_of(&sample()).unwrap(), None);
        // Same request both ways is fine; disagreeing ones and nonsense are bad input.
        let both = json!({"annotations": {"migrun.profile": "9"}, "process": {"env": ["MIGRUN_PROFILE=9"]}});
        assert!(request_of(&both).unwrap().is_some());
        for bad in [
            json!({"annotations": {"migrun.profile": "3g.40gb"}, "process": {"env": ["MIGRUN_PROFILE=1g.10gb"]}}),
            json!({"annotations": {"migrun.profile": "banana"}}),
            json!({"annotations": {"migrun.profile": ""}}),
            json!({"process": {"env": ["MIGRUN_PROFILE=1g.10gb", "MIGRUN_PROFILE=7g.80gb"]}}),
        ] {
            let e = request_of(&bad).unwrap_err();
            assert!(matches!(e, OciError::BadRequest { .. }), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn guard_catches_every_way_to_reach_a_gpu_without_migrun() {
        assert!(!needs_guard(&json!({"process": {"env": ["PATH=/bin"]}})));
        assert!(!needs_guard(
            &json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}})
        ));
        for env in [
            vec!["NVIDIA_VISIBLE_DEVICES=all"],
            vec!["NVIDIA_VISIBLE_DEVICES="],
            vec!["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_VISIBLE_DEVICES=0"],
            vec!["NVIDIA_MIG_CONFIG_DEVICES=all"],
            vec!["NVIDIA_MIG_MONITOR_DEVICES=all"],
            vec!["CUDA_VERSION=8.0"],
            vec!["MIGRUN_LEASE=3"],
        ] {
            let mut spec = json!({"process": {"env": env}});
            assert!(needs_guard(&spec), "{env:?}");
            apply_all(&mut spec, &guard_modifiers()).unwrap();
            assert!(!needs_guard(&spec), "{env:?} -> {spec}");
            assert_eq!(env_lookup(&spec, NVIDIA_VISIBLE_DEVICES), ["void"]);
        }
        assert!(!needs_guard(
            &json!({"process": {"env": ["CUDA_VERSION=12.4", "NVIDIA_REQUIRE_CUDA=cuda>=12"]}})
        ));
        assert!(needs_guard(&json!({"annotations": {"migrun.lease": "1"}})));
    }

    #[test]
    fn state_json_is_checked() {
        let s = parse_state(
            br#"{"ociVersion":"1.0.2-dev","id":"test1","status":"creating","pid":3931,"bundle":"/b","x":1}"#,
            "prestart",
        )
        .unwrap();
        assert_eq!(
            (s.id.as_str(), s.pid, s.bundle.as_path()),
            ("test1", Some(3931), Path::new("/b"))
        );
        let s = parse_state(
            br#"{"ociVersion":"1.0.2-dev","id":"t","status":"stopped","bundle":"/b"}"#,
            "poststop",
        )
        .unwrap();
        assert_eq!(s.pid, None);
        for (bad, what) in [
            (&b""[..], "no container state"),
            (b" \n", "no container state"),
            (b"{", "bad OCI state"),
            (b"[]", "bad OCI state"),
            (br#"{"bundle":"/b"}"#, "no container \"id\""),
            (br#"{"id":"x","bundle":"rel"}"#, "absolute"),
            (br#"{"id":"x"}"#, "absolute"),
        ] {
            let e = parse_state(bad, "prestart").unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    /// Found by fuzz/fuzz_targets/oci_state.rs: serde_json quoted an unknown `status` raw, so a
    /// newline or carriage return in it split the hook's one-line error.
    #[test]
    fn state_errors_quoting_input_stay_one_line() {
        let state = br#"{"id":"x","status":"a\nb\rc","bundle":"/b"}"#;
        let e = parse_state(state, "prestart").unwrap_err().to_string();
        assert!(e.contains(r"unknown variant `a\nb\rc`"), "{e}");
        assert!(!e.contains(['\n', '\r']), "{e:?}");
    }

    /// Found by fuzz/fuzz_targets/spec_rewrite.rs: without serde_json's `float_roundtrip` a float
    /// in an unknown field was read 1 ULP off, so a rewritten config.json changed it.
    #[test]
    fn rewritten_config_keeps_floats_exact() {
        let path = Path::new("config.json");
        let spec = parse_config(br#"{"x-vendor": 8.88e25}"#, path).unwrap();
        assert_eq!(spec["x-vendor"].as_f64(), Some(8.88e25));
        let again = parse_config(&serde_json::to_vec(&spec).unwrap(), path).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn liveness_is_only_ever_positive_evidence() {
        // No runc state for this id anywhere: unknown (the init pid decides), never "gone".
        for e in ["runc", "podman", "cri-o", "containerd", "rkt"] {
            assert_eq!(container_alive("migrun-no-such-container", e), None);
        }
        assert_eq!(container_alive("../etc", "runc"), None);
        assert_eq!(container_alive("", "runc"), None);
    }

    #[test]
    fn engines_are_told_apart_by_annotations() {
        let a = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            engine_from_annotations(&a("io.container.manager", "libpod")),
            "podman"
        );
        assert_eq!(
            engine_from_annotations(&a("io.kubernetes.cri-o.Name", "x")),
            "cri-o"
        );
        assert_eq!(
            engine_from_annotations(&a("io.kubernetes.cri.container-type", "x")),
            "containerd"
        );
        assert_eq!(engine_from_annotations(&HashMap::new()), "runc");
    }

    /// Lease operations over a Vec, counting what was done.
    #[derive(Default)]
    struct FakeOps {
        leases: Vec<Lease>,
        next: LeaseId,
        fail_alloc: Option<&'static str>,
        allocations: u32,
        releases: Vec<LeaseId>,
    }

    impl LeaseOps for FakeOps {
        fn allocate(&mut self, _req: &Request, holder: Holder) -> Result<Lease, OpsError> {
            if let Some(e) = self.fail_alloc {
                return Err(e.into());
            }
            self.next += 1;
            self.allocations += 1;
            let l = lease(self.next, &format!("MIG-{}", self.next), holder);
            self.leases.push(l.clone());
            Ok(l)
        }
        fn lease(&mut self, id: LeaseId) -> Result<Option<Lease>, OpsError> {
            Ok(self.leases.iter().find(|l| l.id == id).cloned())
        }
        fn lease_of_container(&mut self, id: &str) -> Result<Option<Lease>, OpsError> {
            Ok(self
                .leases
                .iter()
                .find(|l| matches!(&l.holder, Holder::Container { id: c, .. } if c == id))
                .cloned())
        }
        fn set_holder(&mut self, id: LeaseId, holder: Holder) -> Result<(), OpsError> {
            let l = self
                .leases
                .iter_mut()
                .find(|l| l.id == id)
                .ok_or("no lease")?;
            l.holder = holder;
            Ok(())
        }
        fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError> {
            let Some(at) = self.leases.iter().position(|l| l.id == id) else {
                return Ok(ReleaseOutcome::NoLease);
            };
            let l = self.leases.remove(at);
            self.releases.push(id);
            Ok(ReleaseOutcome::Destroyed {
                lease: id,
                mig_uuid: l.mig_uuid,
            })
        }
        fn release_container(&mut self, id: &str) -> Result<ReleaseOutcome, OpsError> {
            match self.lease_of_container(id)? {
                Some(l) => self.release(l.id),
                None => Ok(ReleaseOutcome::NoLease),
            }
        }
    }

    fn bundle(spec: &Value) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let bytes = serde_json::to_vec_pretty(spec).unwrap();
        std::fs::write(t.path().join("config.json"), &bytes).unwrap();
        let p = t.path().to_path_buf();
        (t, p, bytes)
    }

    fn state(id: &str, bundle: &Path) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"ociVersion": "1.0.2", "id": id, "status": "creating",
            "pid": std::process::id(), "bundle": bundle}),
        )
        .unwrap()
    }

    fn asking(profile: &str) -> Value {
        let mut s = sample();
        s["annotations"] = json!({"migrun.profile": profile, "x-keep": "1"});
        s
    }

    #[test]
    fn prestart_then_poststop_for_runc() {
        let (_t, b, _) = bundle(&asking("1g.10gb"));
        let mut ops = FakeOps::default();
        let out = prestart(&state("c1", &b), &mut ops, None).unwrap();
        assert_eq!(
            out,
            Outcome::Leased {
                lease: 1,
                mig_uuid: "MIG-1".into(),
                reused: false
            }
        );
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-1"]);
        assert_eq!(cfg["annotations"]["x-keep"], "1");
        let Holder::Container { id, engine, pid } = &ops.leases[0].holder else {
            panic!()
        };
        assert_eq!((id.as_str(), engine.as_str()), ("c1", "runc"));
        assert_eq!(pid.unwrap().0, std::process::id());
        // A retried prestart adopts instead of allocating twice.
        let bytes = std::fs::read(b.join("config.json")).unwrap();
        assert!(matches!(
            prestart(&state("c1", &b), &mut ops, None).unwrap(),
            Outcome::Adopted { lease: 1, .. }
        ));
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
        assert_eq!(ops.allocations, 1);
        // poststop releases; twice is fine.
        assert!(matches!(
            poststop(&state("c1", &b), &mut ops).unwrap(),
            Outcome::Released(ReleaseOutcome::Destroyed { lease: 1, .. })
        ));
        assert_eq!(
            poststop(&state("c1", &b), &mut ops).unwrap(),
            Outcome::Released(ReleaseOutcome::NoLease)
        );
        assert_eq!(ops.releases, [1]);
    }

    #[test]
    fn no_request_passes_through_byte_identical_and_never_touches_leases() {
        let mut plain = sample();
        plain["process"]["env"] = json!(["PATH=/bin"]);
        let (_t, b, bytes) = bundle(&plain);
        let mut ops = FakeOps {
            fail_alloc: Some("must not be called"),
            ..FakeOps::default()
        };
        assert_eq!(
            prestart(&state("c", &b), &mut ops, None).unwrap(),
            Outcome::PassThrough
        );
        assert_eq!(
            poststop(&state("c", &b), &mut ops).unwrap(),
            Outcome::PassThrough
        );
        let hooks = ShimHooks {
            bin: "/usr/bin/migrun".into(),
            env: vec![],
            timeout_s: None,
        };
        assert_eq!(
            shim_create(&b, "c", "docker", &mut ops, &hooks).unwrap(),
            Outcome::PassThrough
        );
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
        let mut out = Vec::new();
        let input = serde_json::to_vec_pretty(&plain).unwrap();
        precreate(&input, &mut ops, Holder::Manual, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn a_container_that_brings_its_own_nvidia_devices_is_neutralised() {
        // sample() carries NVIDIA_VISIBLE_DEVICES twice and asks migrun for nothing.
        let (_t, b, _) = bundle(&sample());
        let mut ops = FakeOps::default();
        assert_eq!(
            prestart(&state("c", &b), &mut ops, None).unwrap(),
            Outcome::Guarded
        );
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["void"]);
        assert_eq!(ops.allocations, 0);
    }

    #[test]
    fn shim_create_adds_hooks_and_markers_and_strips_forged_ones() {
        let mut spec = asking("1g.10gb");
        spec["annotations"]["migrun.lease"] = json!("99");
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("MIGRUN_LEASE=99"));
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("NVIDIA_MIG_CONFIG_DEVICES=all"));
        let (_t, b, _) = bundle(&spec);
        let mut ops = FakeOps::default();
        let hooks = ShimHooks {
            bin: "/usr/bin/migrun".into(),
            env: vec![("MIGRUN_ENGINE".into(), "docker".into())],
            timeout_s: Some(30),
        };
        let out = shim_create(&b, "ctr", "docker", &mut ops, &hooks).unwrap();
        assert_eq!(
            out,
            Outcome::Leased {
                lease: 1,
                mig_uuid: "MIG-1".into(),
                reused: false
            }
        );
        let after = std::fs::read(b.join("config.json")).unwrap();
        let cfg: Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(lease_marker(&cfg).unwrap(), Some(1));
        assert!(!env_has(&cfg, "NVIDIA_MIG_CONFIG_DEVICES"));
        assert!(is_migrun_hook(&cfg["hooks"]["prestart"][0]));
        assert!(is_migrun_hook(&cfg["hooks"]["poststop"][0]));
        // A retried create finds the container's lease and leaves the file as it is.
        let out = shim_create(&b, "ctr", "docker", &mut ops, &hooks).unwrap();
        assert!(matches!(
            out,
            Outcome::Leased {
                lease: 1,
                reused: true,
                ..
            }
        ));
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), after);
        // The prestart hook the shim added hands the lease to the container with its pid.
        assert!(matches!(
            prestart(&state("ctr", &b), &mut ops, Some("docker")).unwrap(),
            Outcome::Adopted { lease: 1, .. }
        ));
        assert!(matches!(
            &ops.leases[0].holder,
            Holder::Container { pid: Some(_), .. }
        ));
    }

    #[test]
    fn precreate_marks_the_config_and_poststop_finds_the_lease() {
        let mut ops = FakeOps::default();
        let podman = Holder::Process {
            pid: 1,
            start_time: 1,
        };
        let mut spec = asking("1g.10gb");
        spec["annotations"]["io.container.manager"] = json!("libpod");
        spec["annotations"]["migrun.lease"] = json!("42");
        let mut out = Vec::new();
        let input = serde_json::to_vec(&spec).unwrap();
        let o = precreate(&input, &mut ops, podman, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(matches!(o, Outcome::Leased { lease: 1, .. }));
        let cfg: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            lease_marker(&cfg).unwrap(),
            Some(1),
            "the forged 42 is gone"
        );
        assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-1"]);
        // The container failed before prestart: poststop still finds the lease through the marker.
        let (_t, b, _) = bundle(&cfg);
        let st =
            serde_json::to_vec(&json!({"id": "p1", "status": "stopped", "bundle": b})).unwrap();
        assert!(matches!(
            poststop(&st, &mut ops).unwrap(),
            Outcome::Released(ReleaseOutcome::Destroyed { lease: 1, .. })
        ));
        // Or prestart adopts it (podman).
        let mut out = Vec::new();
        precreate(
            &input,
            &mut ops,
            Holder::Process {
                pid: 1,
                start_time: 1,
            },
            &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        let (_t2, b2, _) = bundle(&serde_json::from_slice(&out).unwrap());
        let st = state("p2", &b2);
        assert!(matches!(
            prestart(&st, &mut ops, None).unwrap(),
            Outcome::Adopted { lease: 2, .. }
        ));
        assert!(
            matches!(&ops.leases[0].holder, Holder::Container { id, engine, .. } if id == "p2" && engine == "podman")
        );
    }

    #[test]
    fn a_failed_emit_releases_the_lease() {
        let mut ops = FakeOps::default();
        let input = serde_json::to_vec(&asking("1g.10gb")).unwrap();
        let e = precreate(&input, &mut ops, Holder::Manual, &mut |_| {
            Err(std::io::Error::other("pipe closed"))
        })
        .unwrap_err();
        assert!(matches!(e, OciError::Emit(_)));
        assert!(ops.leases.is_empty());
        assert_eq!(ops.releases, [1]);
    }

    #[test]
    fn forged_or_stale_markers_fail_the_start() {
        let mut ops = FakeOps::default();
        ops.leases.push(lease(
            5,
            "MIG-5",
            Holder::Container {
                id: "other".into(),
                engine: "docker".into(),
                pid: None,
            },
        ));
        ops.leases.push(lease(
            6,
            "MIG-6",
            Holder::Process {
                pid: 1,
                start_time: 1,
            },
        ));
        for (marker, uuid) in [("5", "MIG-5"), ("6", "MIG-6"), ("77", "MIG-77")] {
            let mut spec = asking("1g.10gb");
            spec["annotations"]["migrun.lease"] = json!(marker);
            spec["process"]["env"] = json!([format!("NVIDIA_VISIBLE_DEVICES={uuid}")]);
            let (_t, b, bytes) = bundle(&spec);
            let e = prestart(&state("me", &b), &mut ops, None).unwrap_err();
            assert!(matches!(e, OciError::StaleMarker { .. }), "{e}");
            assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
        }
        assert_eq!(ops.allocations, 0);
        assert!(ops.releases.is_empty());
        // poststop of a container whose config names someone else's lease leaves it alone.
        let mut spec = asking("1g.10gb");
        spec["annotations"]["migrun.lease"] = json!("5");
        let (_t, b, _) = bundle(&spec);
        assert_eq!(
            poststop(&state("me", &b), &mut ops).unwrap(),
            Outcome::Released(ReleaseOutcome::NoLease)
        );
        assert_eq!(ops.leases.len(), 2);
    }

    #[test]
    fn bad_bundles_and_configs_are_clear_errors_with_nothing_changed() {
        let mut ops = FakeOps::default();
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = prestart(&state("c", &missing), &mut ops, None).unwrap_err();
        assert!(matches!(e, OciError::MissingBundle { .. }), "{e}");
        for (content, what) in [
            ("", "it is empty"),
            ("{not json", "invalid OCI config"),
            ("[1,2]", "not a JSON object"),
            (r#"{"process": {"env": "X=1"}}"#, "process.env"),
            (r#"{"annotations": {"migrun.profile": 3}}"#, "annotations"),
            (
                r#"{"annotations": {"migrun.profile": "7g.99gb+zz"}}"#,
                "bad profile",
            ),
        ] {
            std::fs::write(t.path().join("config.json"), content).unwrap();
            let e = prestart(&state("c", t.path()), &mut ops, None).unwrap_err();
            assert!(e.to_string().contains(what), "{content}: {e}");
            assert_eq!(exit_code_of(&e), Some(crate::exit::USAGE));
            assert_eq!(
                std::fs::read_to_string(t.path().join("config.json")).unwrap(),
                content
            );
        }
        // An allocation failure leaves no lease and the file as it was.
        let (_t2, b, bytes) = bundle(&asking("1g.10gb"));
        ops.fail_alloc = Some("no room for 1g.10gb on GPU 0");
        let e = prestart(&state("c", &b), &mut ops, None).unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(e)).contains("no room"));
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
        assert!(ops.leases.is_empty());
    }
}
