//! The flows with CDI injection: the shim and precreate write the lease's CDI edits into the config, prestart never does, and a spec that cannot be read gives a new lease back.

use super::*;

fn edits() -> crate::cdi::types::ContainerEdits {
    serde_json::from_value(json!({
        "env": ["NVIDIA_VISIBLE_DEVICES=MIG-1", "MIGRUN_LEASE=1"],
        "deviceNodes": [
            {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 438},
            {"path": "/dev/nvidia-caps/nvidia-cap12", "type": "c", "major": 241, "minor": 12, "fileMode": 292}
        ]
    }))
    .unwrap()
}

fn hooks() -> ShimHooks {
    ShimHooks {
        bin: "/usr/bin/migrun".into(),
        env: vec![],
        timeout_s: None,
        binds_itself: None,
    }
}

fn node_paths(cfg: &Value) -> Vec<String> {
    cfg["linux"]["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["path"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_shim_writes_the_lease_s_device_nodes_once() {
    let (_t, b, _) = bundle(&asking("1g.10gb"));
    let mut ops = FakeOps {
        cdi: Some(Ok(edits())),
        ..Default::default()
    };
    shim_create(&b, "ctr", "docker", &mut ops, &hooks(), None).unwrap();
    let after = std::fs::read(b.join("config.json")).unwrap();
    let cfg: Value = serde_json::from_slice(&after).unwrap();
    assert_eq!(
        node_paths(&cfg),
        ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12"]
    );
    assert_eq!(cfg["linux"]["resources"]["devices"][1]["minor"], 12);
    assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-1"]);
    // A retried create reuses the lease and changes nothing.
    shim_create(&b, "ctr", "docker", &mut ops, &hooks(), None).unwrap();
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), after);
}

#[test]
fn env_injection_writes_no_device_nodes() {
    let (_t, b, _) = bundle(&asking("1g.10gb"));
    let mut ops = FakeOps::default();
    shim_create(&b, "ctr", "docker", &mut ops, &hooks(), None).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert!(node_paths(&cfg).is_empty());
    assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-1"]);
}

#[test]
fn an_unreadable_spec_gives_the_new_lease_back_and_leaves_the_config() {
    let (_t, b, before) = bundle(&asking("1g.10gb"));
    let mut ops = FakeOps {
        cdi: Some(Err("cannot read /var/run/cdi/migrun-mig-1.json")),
        ..Default::default()
    };
    let e = shim_create(&b, "ctr", "docker", &mut ops, &hooks(), None).unwrap_err();
    assert!(
        format!("{:#}", anyhow::Error::from(e)).contains("cannot read the CDI spec of lease 1"),
    );
    assert_eq!(ops.releases, [1]);
    assert!(ops.leases.is_empty());
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), before);

    let mut ops = FakeOps {
        cdi: Some(Err("no spec")),
        ..Default::default()
    };
    let input = serde_json::to_vec(&asking("1g.10gb")).unwrap();
    let podman = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let mut out = Vec::new();
    let r = precreate(&input, &mut ops, podman, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    assert!(r.is_err());
    assert_eq!(ops.releases, [1]);
    assert!(out.is_empty() && ops.handovers.is_empty());
}

#[test]
fn precreate_writes_the_nodes_and_prestart_never_does() {
    let mut ops = FakeOps {
        cdi: Some(Ok(edits())),
        ..Default::default()
    };
    let podman = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let cfg = run_precreate(&mut ops, &asking("1g.10gb"), &podman);
    assert_eq!(node_paths(&cfg).len(), 2);

    // prestart allocating by itself cannot reach runc any more: it writes env and marker only.
    let (_t, b, _) = bundle(&asking("1g.10gb"));
    prestart(&state("c9", &b), &mut ops, None).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert!(node_paths(&cfg).is_empty());
    assert_eq!(lease_marker(&cfg).unwrap(), Some(2));
}
