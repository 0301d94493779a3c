//! Reading what a container asks for: config.json and the state JSON a runtime hands a hook, requests, lease markers and the guard's and the lease's modifiers.

use super::*;
use crate::lease::Lease;
use crate::profile::Requested;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

/// Read-only view of the parts of a config migrun looks at.
pub(crate) fn env_lookup<'a>(spec: &'a Value, name: &str) -> Vec<&'a str> {
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

pub(crate) fn env_has(spec: &Value, name: &str) -> bool {
    spec.pointer("/process/env")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|e| env_key(e) == name))
}

pub(crate) fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
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
    pub profile: Requested,
    /// GPU index or GPU-UUID, as given.
    pub gpu: Option<String>,
    /// Where the request came from, for messages (`annotation migrun.profile`).
    pub source: String,
}

pub(crate) fn one_value(
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
    let profile: Requested =
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
/// toolkit treats as "all GPUs" when NVIDIA_VISIBLE_DEVICES is unset. A forged lease marker or
/// hand-over token also counts.
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
        || annotation(spec, ANNOTATION_HANDOVER).is_some()
        || env_has(spec, ENV_HANDOVER)
}

/// The hand-over token in this config, if any (see [`super::binding`]): the `migrun.handover`
/// annotation precreate writes, or the `MIGRUN_HANDOVER` env a spawner that used `migrun alloc
/// --handover` gives a docker container (Docker before 24 cannot set annotations). Both are read
/// from config.json or precreate's input, which the engine writes for whoever may talk to it (root-
/// equivalent); the token only ever unlocks what migrun's own hand-over record says. Two different
/// tokens are bad input.
pub fn handover_token(spec: &Value) -> Result<Option<String>, OciError> {
    Ok(one_value(spec, ANNOTATION_HANDOVER, ENV_HANDOVER)?.map(|(t, _)| t))
}

pub(crate) fn remove_markers() -> Vec<Box<dyn SpecModifier>> {
    vec![
        Box::new(RemoveEnv {
            name: ENV_LEASE.into(),
        }),
        Box::new(RemoveAnnotation {
            key: ANNOTATION_LEASE.into(),
        }),
        Box::new(RemoveAnnotation {
            key: ANNOTATION_HANDOVER.into(),
        }),
        Box::new(RemoveEnv {
            name: ENV_HANDOVER.into(),
        }),
    ]
}

pub(crate) fn remove_mig_env() -> Vec<Box<dyn SpecModifier>> {
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
pub(crate) fn one_line(s: &str) -> String {
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
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use serde_json::json;

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
        // A compute instance of a shared GPU instance (issue 22), asked for the same ways.
        let r = request_of(&json!({"annotations": {"migrun.profile": "1c.3g.40gb"}}))
            .unwrap()
            .unwrap();
        assert!(matches!(r.profile, Requested::Ci(c) if c.to_string() == "1c.3g.40gb"));
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
        let mut forged = json!({"annotations": {"migrun.handover": "00ff"}});
        assert!(needs_guard(&forged));
        apply_all(&mut forged, &guard_modifiers()).unwrap();
        assert_eq!(
            handover_token(&forged).unwrap(),
            None,
            "a token it brought is removed"
        );
        let mut forged = json!({"process": {"env": ["MIGRUN_HANDOVER=00ff"]}});
        assert!(needs_guard(&forged));
        assert_eq!(handover_token(&forged).unwrap().as_deref(), Some("00ff"));
        apply_all(&mut forged, &guard_modifiers()).unwrap();
        assert_eq!(handover_token(&forged).unwrap(), None, "env too");
        let two = json!({"annotations": {"migrun.handover": "aa"}, "process": {"env": ["MIGRUN_HANDOVER=bb"]}});
        assert!(handover_token(&two).is_err(), "two different tokens");
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
}
