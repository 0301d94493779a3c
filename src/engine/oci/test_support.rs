//! Test helpers shared by the oci modules' unit tests: a config with unknown fields, a lease, env access.

use crate::gpu::Placement;
use crate::lease::{Holder, Lease, LeaseId, LeaseState};
use serde_json::{json, Value};

/// A config with unknown fields at several levels, pretty-printed like engines write it.
pub fn sample() -> Value {
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

pub fn lease(id: LeaseId, uuid: &str, holder: Holder) -> Lease {
    Lease {
        id,
        name: None,
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
        ci_profile: None,
        created: true,
        keep: false,
        state: LeaseState::Active,
        created_at: 0,
        updated_at: 0,
    }
}

pub fn env_of(v: &Value) -> Vec<String> {
    v["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}
