//! Spec modifiers: small idempotent edits of an OCI config (env, annotations, hooks, a lease's CDI edits) on a JSON value, so unknown fields survive.

use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

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

pub(crate) fn env_key(entry: &Value) -> &str {
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

/// Drop every `migrun hook …` entry from every hook stage (a bundle a retried create left with the
/// hooks an earlier shim added): the shim that binds a lease itself must not also run hooks for it.
#[derive(Debug, Clone)]
pub struct RemoveMigrunHooks;

impl SpecModifier for RemoveMigrunHooks {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let root = root_obj(spec)?;
        let Some(hooks) = child_obj(root, "hooks", "hooks", false)? else {
            return Ok(false);
        };
        let mut changed = false;
        for list in hooks.values_mut().filter_map(Value::as_array_mut) {
            let before = list.len();
            list.retain(|h| !is_migrun_hook(h));
            changed |= list.len() != before;
        }
        Ok(changed)
    }
}

/// Apply a lease's CDI container edits ([`crate::cdi::apply_edits`]): its device nodes with their
/// cgroup allow rules, the toolkit's mounts and hooks, and the env, so plain runc gives the
/// container the device with no NVIDIA runtime installed. Idempotent, as `apply_edits` is.
#[derive(Debug, Clone)]
pub struct ApplyCdi {
    pub edits: crate::cdi::types::ContainerEdits,
}

impl SpecModifier for ApplyCdi {
    fn apply(&self, spec: &mut Value) -> Result<bool, String> {
        let before = spec.clone();
        crate::cdi::apply_edits(spec, &self.edits).map_err(|e| e.to_string())?;
        Ok(*spec != before)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use crate::lease::Holder;
    use serde_json::json;

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
    fn cdi_edits_apply_once_and_keep_unknown_fields() {
        let edits: crate::cdi::types::ContainerEdits = serde_json::from_value(json!({
            "env": ["NVIDIA_VISIBLE_DEVICES=MIG-aaaa", "MIGRUN_LEASE=7"],
            "deviceNodes": [{"path": "/dev/nvidia-caps/nvidia-cap12", "type": "c", "major": 241, "minor": 12, "fileMode": 292}]
        }))
        .unwrap();
        let m = ApplyCdi { edits };
        let mut once = sample();
        assert!(m.apply(&mut once).unwrap());
        let mut twice = once.clone();
        assert!(
            !m.apply(&mut twice).unwrap(),
            "second apply changes nothing"
        );
        assert_eq!(once, twice);
        assert_eq!(once["linux"]["devices"][0]["minor"], 12);
        assert_eq!(once["linux"]["resources"]["devices"][0]["access"], "rwm");
        assert_eq!(once["linux"]["x-linux-unknown"]["a"], "b");
        let mut bad = json!({"linux": {"devices": "none"}});
        assert!(m.apply(&mut bad).unwrap_err().contains("linux.devices"));
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
}
