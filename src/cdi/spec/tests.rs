//! Tests of the CDI spec builder: tables over slices and names, and the golden specs docs/cdi.md shows; they must not touch the host's CDI dirs.

use super::*;
use crate::gpu::hostfacts::tests::h200_root;
use serde_json::json;
use std::path::Path;

/// The MIG UUID the tests use; made up (the H200 capture has no instance).
pub(crate) const UUID: &str = "MIG-5f1d3c2a-8b7e-5a4d-9c3b-2e1f0a9b8c7d";

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cdi");
const TOOLKIT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/toolkit-cdi/nvidia.yaml"
);

pub(crate) fn h200_facts() -> HostFacts {
    HostFacts::read_from(h200_root().path()).unwrap()
}

/// Lease `lease` on GI 1 / CI 0 of the captured H200 (device minor 0).
pub(crate) fn h200_slice(lease: LeaseId, name: Option<&str>) -> Slice {
    Slice {
        lease,
        name: name.map(str::to_string),
        mig_uuid: UUID.to_string(),
        gpu_minor: 0,
        gi: 1,
        ci: 0,
    }
}

pub(crate) fn spec_of(slice: &Slice) -> Spec {
    build(slice, &h200_facts(), None).unwrap()
}

fn as_json(spec: &Spec) -> Value {
    serde_json::to_value(spec).unwrap()
}

fn toolkit_edits() -> ContainerEdits {
    crate::cdi::toolkit::load(Path::new(TOOLKIT_FIXTURE)).unwrap()
}

/// `[path, major, minor, fileMode]` of every node of the first device.
fn nodes(v: &Value) -> Vec<(String, u64, u64, u64)> {
    v["devices"][0]["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["type"], "c", "{n}");
            let num = |k: &str| n[k].as_u64().unwrap();
            let path = n["path"].as_str().unwrap().to_string();
            (path, num("major"), num("minor"), num("fileMode"))
        })
        .collect()
}

#[test]
fn device_nodes_table() {
    // (gpu minor, gi, ci) -> (GI cap minor, CI cap minor), as in the H200 capture's mig-minors.
    type Ids = (u32, u32, u32);
    let cases: &[(Ids, (u64, u64))] = &[
        ((0, 0, 0), (3, 4)),
        ((0, 1, 0), (12, 13)),
        ((0, 1, 7), (12, 20)),
        ((0, 2, 0), (21, 22)),
        ((1, 2, 0), (156, 157)),
    ];
    let facts = h200_facts();
    for &((m, gi, ci), (gi_cap, ci_cap)) in cases {
        let slice = Slice {
            gpu_minor: m,
            gi,
            ci,
            ..h200_slice(3, None)
        };
        let got = nodes(&as_json(&build(&slice, &facts, None).unwrap()));
        let cap = |n: u64| (format!("/dev/nvidia-caps/nvidia-cap{n}"), 241, n, 0o444);
        let want = vec![
            (format!("/dev/nvidia{m}"), 195, u64::from(m), 0o666),
            cap(gi_cap),
            cap(ci_cap),
            ("/dev/nvidiactl".to_string(), 195, 255, 0o666),
            ("/dev/nvidia-uvm".to_string(), 238, 0, 0o666),
            ("/dev/nvidia-uvm-tools".to_string(), 238, 1, 0o666),
        ];
        assert_eq!(got, want, "gpu{m}/gi{gi}/ci{ci}");
    }
}

#[test]
fn names_and_env_table() {
    let cases: &[(Option<&str>, &[&str])] = &[
        (None, &["7", UUID]),
        (Some("train"), &["7", "train", UUID]),
        (Some("job-1.a:b_c"), &["7", "job-1.a:b_c", UUID]),
    ];
    for &(name, want) in cases {
        let slice = h200_slice(7, name);
        assert_eq!(slice.device_names(), want);
        let v = as_json(&build(&slice, &h200_facts(), None).unwrap());
        assert_eq!(v["kind"], KIND);
        let devices = v["devices"].as_array().unwrap();
        let names: Vec<&str> = devices
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want);
        for d in devices {
            assert_eq!(
                d["containerEdits"]["env"],
                json!([format!("NVIDIA_VISIBLE_DEVICES={UUID}"), "MIGRUN_LEASE=7"])
            );
            assert_eq!(d["containerEdits"], devices[0]["containerEdits"]);
        }
        // A device name starting with a digit (the lease id) needs CDI 0.5.0, which podman 4.x,
        // containerd 1.7 and docker 25 all read.
        assert_eq!(v["cdiVersion"], "0.5.0");
        assert!(
            v.get("containerEdits").is_none(),
            "no toolkit, no common edits"
        );
    }
    assert_eq!(qualified_name("7"), "migrun.io/mig=7");
}

#[test]
fn refusals_table() {
    let facts = h200_facts();
    // (slice change, words of the one-line message, exit code)
    type Change = fn(&mut Slice);
    let cases: &[(Change, &[&str], i32)] = &[
        (|s| s.name = Some("12".into()), &["\"12\"", "lease id"], 2),
        (|s| s.name = Some("MIG-x".into()), &["MIG UUID"], 2),
        (
            |s| s.name = Some("a b".into()),
            &["\"a b\"", "letters, digits"],
            2,
        ),
        (|s| s.name = Some("-x".into()), &["starting and ending"], 2),
        (|s| s.name = Some(String::new()), &["\"\""], 2),
        (
            |s| s.gi = 15,
            &["no gpu0/gi15/access entry", "mig-minors"],
            1,
        ),
        (|s| s.ci = 8, &["no gpu0/gi1/ci8/access entry"], 1),
        (|s| s.gpu_minor = 32, &["no gpu32/gi1/access entry"], 1),
        (
            |s| s.mig_uuid = "MIG 1".into(),
            &["lease 3", "does not validate", "bug"],
            1,
        ),
    ];
    for (i, (change, words, code)) in cases.iter().enumerate() {
        let mut slice = h200_slice(3, None);
        change(&mut slice);
        let e = build(&slice, &facts, None).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "case {i}: one line: {msg}");
        for w in *words {
            assert!(msg.contains(w), "case {i}: {w:?} missing from: {msg}");
        }
        assert_eq!(crate::exit::ExitCodeOf::exit_code(&e), *code, "case {i}");
    }
}

#[test]
fn the_toolkit_s_edits_are_the_spec_s_common_edits() {
    let spec = build(
        &h200_slice(7, Some("train")),
        &h200_facts(),
        Some(&toolkit_edits()),
    )
    .unwrap();
    let v = as_json(&spec);
    assert_eq!(
        v["containerEdits"],
        serde_json::to_value(toolkit_edits()).unwrap()
    );
    // Empty common edits are left out rather than written as `{}`.
    let empty = ContainerEdits::default();
    let v2 = as_json(&build(&h200_slice(7, None), &h200_facts(), Some(&empty)).unwrap());
    assert!(v2.get("containerEdits").is_none());

    // What a container gets for each name: the toolkit's env, mounts and hooks, then the device's.
    for name in ["7", "train", UUID] {
        let e = serde_json::to_value(edits_for(&spec, name).unwrap()).unwrap();
        assert_eq!(
            e["env"],
            json!([
                "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu",
                format!("NVIDIA_VISIBLE_DEVICES={UUID}"),
                "MIGRUN_LEASE=7"
            ])
        );
        assert_eq!(e["deviceNodes"].as_array().unwrap().len(), 6);
        assert_eq!(e["mounts"].as_array().unwrap().len(), 2);
        assert_eq!(e["hooks"].as_array().unwrap().len(), 2);
    }
    let msg = edits_for(&spec, "8").unwrap_err().to_string();
    assert!(
        msg.contains("no device \"8\"") && msg.contains("its devices are 7, train, MIG-"),
        "{msg}"
    );
}

/// The specs docs/cdi.md shows, byte for byte. `MIGRUN_BLESS=1 cargo test --lib golden` rewrites them.
#[test]
fn golden_specs() {
    let facts = h200_facts();
    let cases = [
        ("migrun-mig-7.json", None),
        ("migrun-mig-7-with-toolkit.json", Some(toolkit_edits())),
    ];
    for (file, toolkit) in cases {
        let spec = build(&h200_slice(7, Some("train")), &facts, toolkit.as_ref()).unwrap();
        let mut got = serde_json::to_string_pretty(&spec).unwrap();
        got.push('\n');
        let path = Path::new(GOLDEN_DIR).join(file);
        if std::env::var_os("MIGRUN_BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            got, want,
            "{file} differs; if the change is meant, rerun with MIGRUN_BLESS=1"
        );
    }
}

/// What the crate itself gives for device `name` after its full `new_spec` (schema included): its
/// common edits, then the device's, merged by the crate.
fn crate_edits(spec: &Spec, name: &str) -> ContainerEdits {
    let mut checked = validate(spec).unwrap();
    let device = checked.get_device(name).unwrap().edits();
    let mut all = Edits::new();
    if let Some(common) = checked.edits() {
        all.append(common).unwrap();
    }
    all.append(device).unwrap();
    all.container_edits
}

/// Migrun checks its specs without the crate's schema pass (`check_built`); every shape the
/// builder makes (no name / a name, no toolkit / the toolkit's edits / empty ones, GI and CI nodes)
/// must pass the full check too, and both must give each device the same edits.
#[test]
fn every_built_shape_passes_the_full_schema_check() {
    let toolkit = toolkit_edits();
    let empty = ContainerEdits::default();
    for name in [None, Some("train")] {
        for common in [None, Some(&toolkit), Some(&empty)] {
            let slice = h200_slice(7, name);
            let spec = build(&slice, &h200_facts(), common).unwrap();
            validate(&spec).unwrap_or_else(|e| panic!("{name:?} {common:?}: {e}"));
            for device in slice.device_names() {
                assert_eq!(
                    check_built(&spec, &device, "built").unwrap(),
                    crate_edits(&spec, &device)
                );
            }
        }
    }
    // A device the spec does not declare is refused the same way.
    let spec = spec_of(&h200_slice(7, None));
    assert!(matches!(
        check_built(&spec, "8", "built"),
        Err(SpecError::NoDevice { .. })
    ));
}
