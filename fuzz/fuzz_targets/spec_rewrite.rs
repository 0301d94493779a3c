//! Fuzz target: config.json rewriting (`engine::oci` SpecModifier composition as the hooks and the shim use it); no file I/O.
//!
//! Input: one selector byte, then the config JSON. The selector picks the composition: the guard a
//! container that asked for nothing gets; the lease rewrite of precreate/prestart (drop forged
//! markers, then `lease_modifiers`); or the shim's (that plus migrun's prestart/poststop hooks).
//! Properties, for every config `parse_config` accepts (the flows validate before they modify):
//! - applying never fails and never panics;
//! - the output serialises to JSON that `parse_config` accepts and that reads back equal;
//! - every key path migrun does not own keeps its value (unknown fields survive); in `process.env`
//!   every entry migrun does not manage survives in order, in `hooks.<stage>` every hook that is not
//!   migrun's survives in order;
//! - the managed values are right (exactly one NVIDIA_VISIBLE_DEVICES, no MIG management env, …);
//! - applying twice equals applying once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::engine::oci::{
    self, AddHook, HookPosition, RemoveAnnotation, RemoveEnv, SpecModifier, ANNOTATION_HANDOVER,
    ANNOTATION_LEASE, ENV_LEASE, NVIDIA_MIG_ENV, NVIDIA_NO_DEVICES, NVIDIA_VISIBLE_DEVICES,
};
use migrun::gpu::Placement;
use migrun::lease::{Holder, Lease, LeaseState};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flow {
    Guard,
    Lease,
    Shim,
}

fn lease(id: u64) -> Lease {
    Lease {
        id,
        name: None,
        holder: Holder::Manual,
        uid: 0,
        gpu_index: 0,
        gpu_uuid: "GPU-00000000-0000-5000-8000-000000000000".into(),
        gi: 1,
        ci: 0,
        profile_id: 19,
        profile: "1g.10gb".into(),
        placement: Placement { start: 0, size: 1 },
        mig_uuid: "MIG-11111111-1111-5111-8111-111111111111".into(),
        ci_profile: None,
        created: true,
        keep: false,
        state: LeaseState::Active,
        created_at: 1,
        updated_at: 1,
    }
}

fn modifiers(flow: Flow, lease: &Lease) -> Vec<Box<dyn SpecModifier>> {
    if flow == Flow::Guard {
        return oci::guard_modifiers();
    }
    // As precreate/prestart/shim_create compose them: forged markers out, then the lease's own.
    let mut m: Vec<Box<dyn SpecModifier>> = vec![
        Box::new(RemoveEnv {
            name: ENV_LEASE.into(),
        }),
        Box::new(RemoveAnnotation {
            key: ANNOTATION_LEASE.into(),
        }),
        Box::new(RemoveAnnotation {
            key: ANNOTATION_HANDOVER.into(),
        }),
    ];
    m.extend(oci::lease_modifiers(lease));
    if flow == Flow::Shim {
        let env = vec![("MIGRUN_STATE_DIR".to_string(), "/run/migrun".to_string())];
        let bin = Path::new("/usr/bin/migrun");
        m.push(Box::new(AddHook::migrun(
            "prestart",
            bin,
            &env,
            Some(30),
            HookPosition::First,
        )));
        m.push(Box::new(AddHook::migrun(
            "poststop",
            bin,
            &env,
            Some(30),
            HookPosition::Last,
        )));
    }
    m
}

fn managed_env(name: &str) -> bool {
    name == NVIDIA_VISIBLE_DEVICES || name == ENV_LEASE || NVIDIA_MIG_ENV.contains(&name)
}

fn env_name(e: &Value) -> &str {
    let s = e.as_str().expect("validated: env entries are strings");
    s.split_once('=').map_or(s, |(k, _)| k)
}

fn env_of(spec: &Value) -> Vec<Value> {
    spec.pointer("/process/env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn unmanaged_env(v: &Value) -> Vec<&Value> {
    v.as_array()
        .map(|a| a.iter().filter(|e| !managed_env(env_name(e))).collect())
        .unwrap_or_default()
}

fn foreign_hooks(v: &Value) -> Vec<&Value> {
    v.as_array()
        .map(|a| a.iter().filter(|h| !oci::is_migrun_hook(h)).collect())
        .unwrap_or_default()
}

/// Every path of `inp` that migrun does not own is in `out` with the same value.
fn check_kept(inp: &Value, out: &Value, path: &mut Vec<String>, flow: Flow) {
    let Value::Object(im) = inp else {
        assert_eq!(inp, out, "value at /{} changed", path.join("/"));
        return;
    };
    let om = out
        .as_object()
        .unwrap_or_else(|| panic!("/{} is no longer an object: {out}", path.join("/")));
    for (k, v) in im {
        path.push(k.clone());
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let o = om.get(k);
        match p.as_slice() {
            // Containers migrun may create where they were null.
            ["process" | "annotations" | "hooks"] if v.is_null() => {}
            ["process", "env"] if v.is_null() => {}
            ["process", "env"] => {
                let o = o.expect("process.env vanished");
                assert_eq!(unmanaged_env(v), unmanaged_env(o), "unmanaged env changed");
            }
            ["annotations", a] if *a == ANNOTATION_LEASE || *a == ANNOTATION_HANDOVER => {}
            ["hooks", "prestart" | "poststop"] if flow == Flow::Shim => {
                if !v.is_null() {
                    let o = o.expect("hook stage vanished");
                    assert_eq!(foreign_hooks(v), foreign_hooks(o), "foreign hooks changed");
                }
            }
            _ => {
                let o = o.unwrap_or_else(|| panic!("/{} was dropped", path.join("/")));
                check_kept(v, o, path, flow);
            }
        }
        path.pop();
    }
}

fn check_managed(out: &Value, flow: Flow, lease: &Lease, hooks: &[Box<dyn SpecModifier>]) {
    let env = env_of(out);
    let values = |name: &str| -> Vec<String> {
        env.iter()
            .filter(|e| env_name(e) == name)
            .map(|e| {
                e.as_str().unwrap()[name.len()..]
                    .trim_start_matches('=')
                    .to_string()
            })
            .collect()
    };
    for n in NVIDIA_MIG_ENV {
        assert!(values(n).is_empty(), "{n} left in env");
    }
    let marker = out.pointer(&format!("/annotations/{ANNOTATION_LEASE}"));
    assert!(
        out.pointer(&format!("/annotations/{ANNOTATION_HANDOVER}")).is_none(),
        "a hand-over token the config brought is kept"
    );
    match flow {
        Flow::Guard => {
            assert_eq!(values(NVIDIA_VISIBLE_DEVICES), [NVIDIA_NO_DEVICES]);
            assert!(values(ENV_LEASE).is_empty(), "forged lease env kept");
            assert!(marker.is_none(), "forged lease annotation kept");
        }
        Flow::Lease | Flow::Shim => {
            assert_eq!(values(NVIDIA_VISIBLE_DEVICES), [lease.mig_uuid.as_str()]);
            assert_eq!(values(ENV_LEASE), [lease.id.to_string()]);
            assert_eq!(marker, Some(&Value::String(lease.id.to_string())));
        }
    }
    if flow == Flow::Shim {
        for (stage, m) in ["prestart", "poststop"].iter().zip(hooks) {
            let list = out
                .pointer(&format!("/hooks/{stage}"))
                .and_then(Value::as_array)
                .expect("hook stage is an array");
            let ours: Vec<&Value> = list.iter().filter(|h| oci::is_migrun_hook(h)).collect();
            assert_eq!(ours.len(), 1, "{stage}: {ours:?} ({m:?})");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, json)) = data.split_first() else {
        return;
    };
    let flow = match sel % 3 {
        0 => Flow::Guard,
        1 => Flow::Lease,
        _ => Flow::Shim,
    };
    let lease = lease(u64::from(sel / 3));
    let path = Path::new("config.json");
    let Ok(input) = oci::parse_config(json, path) else {
        return;
    };
    let mods = modifiers(flow, &lease);

    let mut out = input.clone();
    oci::apply_all(&mut out, &mods)
        .unwrap_or_else(|e| panic!("{flow:?} failed on a config parse_config accepted: {e}"));

    // What the hooks write (config.json) or emit (precreate's stdout) must read back the same.
    let bytes = serde_json::to_vec(&out).expect("a Value serialises");
    let reread = oci::parse_config(&bytes, path)
        .unwrap_or_else(|e| panic!("{flow:?} output does not parse: {e}"));
    assert_eq!(reread, out, "{flow:?} output reads back different");

    check_kept(&input, &out, &mut Vec::new(), flow);
    check_managed(&out, flow, &lease, &mods[mods.len().saturating_sub(2)..]);

    let mut twice = out.clone();
    // Only the value is compared: the lease flows drop the markers and then set them again, so a
    // second pass reports a change (a redundant, identical rewrite) although nothing differs.
    oci::apply_all(&mut twice, &mods).expect("second pass");
    assert_eq!(twice, out, "{flow:?} is not idempotent");
});
