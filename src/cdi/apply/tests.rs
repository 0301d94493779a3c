//! Tests of applying CDI edits to config.json: tables over configs, idempotence and unknown-field preservation; they must not touch files.

use super::*;
use crate::cdi::spec::tests::{h200_facts, h200_slice, UUID};
use crate::cdi::spec::{build, edits_for};
use serde_json::json;

const TOOLKIT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/toolkit-cdi/nvidia.yaml"
);

/// The edits a container gets for `migrun.io/mig=7` of the captured H200 slice, with the synthetic toolkit.
fn slice_edits() -> ContainerEdits {
    let toolkit = crate::cdi::toolkit::load(std::path::Path::new(TOOLKIT_FIXTURE)).unwrap();
    let spec = build(&h200_slice(7, None), &h200_facts(), Some(&toolkit)).unwrap();
    edits_for(&spec, "7").unwrap()
}

fn edits(v: Value) -> ContainerEdits {
    serde_json::from_value(v).unwrap()
}

fn applied(config: Value, e: &ContainerEdits) -> Value {
    let mut c = config;
    apply_edits(&mut c, e).unwrap();
    c
}

/// A config.json as an engine writes it, with fields migrun does not know anywhere it could lose them.
fn engine_config() -> Value {
    json!({
        "ociVersion": "1.2.0",
        "x-vendor-extension": { "keep": [1, 2, 3] },
        "process": {
            "user": { "uid": 0, "gid": 0 },
            "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"],
            "ioPriority": { "class": "IOPRIO_CLASS_IDLE" },
            "futureProcessField": true
        },
        "root": { "path": "rootfs" },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/usr/bin/nvidia-smi", "type": "bind", "source": "/old" }
        ],
        "hooks": { "prestart": [{ "path": "/bin/other-hook" }], "futureHookKind": [] },
        "linux": {
            "devices": [{ "path": "/dev/nvidiactl", "type": "c", "major": 1, "minor": 1 }],
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "futureResource": { "a": 1 }
            },
            "intelRdt": { "closID": "x" },
            "futureLinuxField": "kept"
        },
        "annotations": { "io.example/a": "b" }
    })
}

#[test]
fn a_slice_s_edits_on_an_engine_config() {
    let c = applied(engine_config(), &slice_edits());
    let env = c["process"]["env"].as_array().unwrap();
    assert_eq!(
        env,
        &vec![
            json!("PATH=/bin"),
            json!(format!("NVIDIA_VISIBLE_DEVICES={UUID}")),
            json!("NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu"),
            json!("MIGRUN_LEASE=7"),
        ],
        "replaced in place, new ones appended"
    );
    let devices = c["linux"]["devices"].as_array().unwrap();
    let paths: Vec<&str> = devices
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/nvidiactl",
            "/dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap12",
            "/dev/nvidia-caps/nvidia-cap13",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    assert_eq!(
        devices[0],
        json!({ "path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255, "fileMode": 438 }),
        "the engine's node at the same path is replaced"
    );
    assert_eq!(
        devices[2],
        json!({ "path": "/dev/nvidia-caps/nvidia-cap12", "type": "c", "major": 241, "minor": 12, "fileMode": 292 })
    );
    let rules = c["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(
        rules.len(),
        7,
        "the deny-all rule, then one allow per node: {rules:?}"
    );
    assert_eq!(
        rules[3],
        json!({ "allow": true, "type": "c", "major": 241, "minor": 13, "access": "rwm" })
    );
    let mounts = c["mounts"].as_array().unwrap();
    let dests: Vec<&str> = mounts
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.999.99.99",
            "/usr/bin/nvidia-smi"
        ]
    );
    assert_eq!(
        mounts[2]["source"], "/usr/bin/nvidia-smi",
        "same destination replaced"
    );
    assert_eq!(
        mounts[2]["options"],
        json!(["ro", "nosuid", "nodev", "bind"])
    );
    assert_eq!(
        c["hooks"]["prestart"],
        json!([{ "path": "/bin/other-hook" }])
    );
    assert_eq!(c["hooks"]["createContainer"].as_array().unwrap().len(), 2);
    assert_eq!(
        c["hooks"]["createContainer"][1]["path"],
        "/usr/bin/nvidia-cdi-hook"
    );
}

#[test]
fn unknown_fields_are_kept() {
    let before = engine_config();
    let after = applied(before.clone(), &slice_edits());
    for pointer in [
        "/ociVersion",
        "/x-vendor-extension",
        "/process/user",
        "/process/ioPriority",
        "/process/futureProcessField",
        "/root",
        "/hooks/futureHookKind",
        "/linux/resources/futureResource",
        "/linux/intelRdt",
        "/linux/futureLinuxField",
        "/annotations",
    ] {
        assert_eq!(after.pointer(pointer), before.pointer(pointer), "{pointer}");
    }
}

#[test]
fn applying_twice_is_applying_once() {
    let configs = [
        json!({}),
        json!({ "process": { "env": null }, "linux": null, "mounts": null, "hooks": null }),
        engine_config(),
    ];
    let all = slice_edits();
    let env_only = edits(json!({ "env": ["A=1", "A=2"] }));
    for (i, config) in configs.into_iter().enumerate() {
        for e in [&all, &env_only] {
            let once = applied(config.clone(), e);
            assert_eq!(applied(once.clone(), e), once, "config {i}");
        }
    }
    // Within one env list the last value of a key wins, as in CDI.
    assert_eq!(
        applied(json!({}), &env_only)["process"]["env"],
        json!(["A=2"])
    );
}

#[test]
fn node_owner_follows_a_non_root_user() {
    let e = edits(json!({ "deviceNodes": [
        { "path": "/dev/x", "type": "c", "major": 1, "minor": 2 },
        { "path": "/dev/y", "type": "c", "major": 1, "minor": 3, "uid": 5, "permissions": "r" }
    ]}));
    let c = applied(
        json!({ "process": { "user": { "uid": 1000, "gid": 100 } } }),
        &e,
    );
    assert_eq!(c["linux"]["devices"][0]["uid"], 1000);
    assert_eq!(c["linux"]["devices"][0]["gid"], 100);
    assert_eq!(c["linux"]["devices"][1]["uid"], 5, "its own uid wins");
    assert_eq!(c["linux"]["resources"]["devices"][1]["access"], "r");
    let root = applied(json!({ "process": { "user": { "uid": 0 } } }), &e);
    assert!(root["linux"]["devices"][0].get("uid").is_none());
}

#[test]
fn a_path_only_node_is_looked_up_on_the_host() {
    let e = edits(json!({ "deviceNodes": [{ "path": "/dev/null" }] }));
    let c = applied(json!({}), &e);
    assert_eq!(
        (
            c["linux"]["devices"][0]["type"].as_str(),
            c["linux"]["devices"][0]["major"].as_i64()
        ),
        (Some("c"), Some(1))
    );
    let missing = edits(json!({ "deviceNodes": [{ "path": "/dev/migrun-no-such-node" }] }));
    let msg = apply_edits(&mut json!({}), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("CDI device node /dev/migrun-no-such-node:"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn refusals_table() {
    let all = slice_edits();
    // (config, edits, words of the one-line message)
    let cases: Vec<(Value, ContainerEdits, &[&str])> = vec![
        (
            json!([]),
            all.clone(),
            &["(top level) is an array, not an object"],
        ),
        (
            json!({ "linux": "x" }),
            all.clone(),
            &["field linux is a string"],
        ),
        (
            json!({ "process": { "env": 3 } }),
            all.clone(),
            &["process.env is a number, not an array"],
        ),
        (
            json!({ "linux": { "resources": { "devices": {} } } }),
            all.clone(),
            &["linux.resources.devices is an object"],
        ),
        (
            json!({ "mounts": {} }),
            all.clone(),
            &["field mounts is an object"],
        ),
        (
            json!({ "hooks": { "createContainer": 1 } }),
            all.clone(),
            &["hooks.createContainer is a number"],
        ),
        (
            json!({}),
            edits(json!({ "additionalGids": [5] })),
            &["additionalGids", "not supported"],
        ),
        (
            json!({}),
            edits(json!({ "hooks": [{ "hookName": "whenever", "path": "/x" }] })),
            &["hook \"whenever\"", "not an OCI hook name"],
        ),
    ];
    for (config, e, words) in cases {
        let mut c = config.clone();
        let msg = apply_edits(&mut c, &e).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        for w in words {
            assert!(msg.contains(w), "{w:?} missing from: {msg}");
        }
    }
}
