//! The shim binding a lease itself (the engine passed `--pid-file`): no hooks in the config, a record naming the runtime root, the init pid bound after the create, the lease released after the delete of that container in that root only.

use super::*;
use crate::engine::oci::binding::ShimRecord;

fn hooks(root: &str) -> ShimHooks {
    ShimHooks {
        bin: "/usr/bin/migrun".into(),
        env: vec![],
        timeout_s: None,
        binds_itself: Some(root.into()),
    }
}

#[test]
fn a_self_binding_create_adds_no_hooks_and_records_the_runtime_root() {
    let mut spec = asking("1g.10gb");
    // Hooks a retried create left behind go: the shim does their work itself.
    spec["hooks"] = json!({
        "prestart": [{"path": "/usr/bin/migrun", "args": ["migrun", "hook", "prestart"]},
                     {"path": "/usr/bin/other-hook", "args": ["other-hook"]}],
        "poststop": [{"path": "/usr/bin/migrun", "args": ["migrun", "hook", "poststop"]}]
    });
    let (_t, b, _) = bundle(&spec);
    let mut ops = FakeOps::default();
    let out = shim_create(&b, "ctr", "docker", &mut ops, &hooks("/run/r"), Some(1)).unwrap();
    assert!(matches!(
        out,
        Outcome::Leased {
            lease: 1,
            reused: false,
            ..
        }
    ));
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(lease_marker(&cfg).unwrap(), Some(1));
    assert_eq!(cfg["hooks"]["prestart"].as_array().unwrap().len(), 1);
    assert!(!is_migrun_hook(&cfg["hooks"]["prestart"][0]));
    assert_eq!(cfg["hooks"]["poststop"], json!([]));
    let canonical = crate::engine::oci::binding::canonical_bundle(&b);
    assert_eq!(
        ops.shim_records,
        [ShimRecord {
            lease: 1,
            id: "ctr".into(),
            root: "/run/r".into(),
            bundle: canonical,
        }]
    );
    // An id that cannot name a record file falls back to the hooks.
    let (_t2, b2, _) = bundle(&asking("1g.10gb"));
    shim_create(&b2, "a/b", "docker", &mut ops, &hooks("/run/r"), Some(1)).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b2.join("config.json")).unwrap()).unwrap();
    assert!(is_migrun_hook(&cfg["hooks"]["poststop"][0]));
    assert_eq!(ops.shim_records.len(), 1);
}

#[test]
fn the_pid_is_bound_only_for_the_container_and_bundle_the_lease_is_bound_to() {
    let (_t, b, _) = bundle(&asking("1g.10gb"));
    let mut ops = FakeOps::default();
    shim_create(&b, "ctr", "docker", &mut ops, &hooks("/run/r"), Some(1)).unwrap();
    let me = std::process::id();
    // Another container id, or another bundle: nothing changes.
    assert!(!shim_bind_pid(&mut ops, "other", &b, "docker", 1, me).unwrap());
    assert!(!shim_bind_pid(&mut ops, "ctr", Path::new("/elsewhere"), "docker", 1, me).unwrap());
    // Still the waiting shim's (here pid 1).
    assert!(matches!(
        &ops.leases[0].holder,
        Holder::Container {
            pid: Some((1, _)),
            ..
        }
    ));
    assert!(shim_bind_pid(&mut ops, "ctr", &b, "docker", 1, me).unwrap());
    assert!(matches!(
        &ops.leases[0].holder,
        Holder::Container { pid: Some((p, _)), .. } if *p == me
    ));
}

#[test]
fn a_delete_releases_only_the_lease_recorded_for_that_id_in_that_root() {
    let (_t, b, _) = bundle(&asking("1g.10gb"));
    let mut ops = FakeOps::default();
    shim_create(&b, "ctr", "docker", &mut ops, &hooks("/run/r"), Some(1)).unwrap();
    // The same id in another runtime root (another engine) is not ours.
    assert_eq!(
        shim_delete_plan(&mut ops, "ctr", Path::new("/run/other")).unwrap(),
        ShimDelete::NotOurs
    );
    assert_eq!(
        shim_delete_plan(&mut ops, "nope", Path::new("/run/r")).unwrap(),
        ShimDelete::NotOurs
    );
    let ShimDelete::Release(rec) = shim_delete_plan(&mut ops, "ctr", Path::new("/run/r")).unwrap()
    else {
        panic!("the record of ctr in /run/r")
    };
    // A record whose lease meanwhile went to another container releases nothing.
    let mut moved = ops.leases[0].clone();
    moved.holder = crate::engine::oci::binding::container_holder("x", "docker", &b, None);
    ops.leases[0] = moved;
    assert_eq!(
        shim_deleted(&mut ops, &rec).unwrap(),
        Outcome::Released(ReleaseOutcome::NoLease)
    );
    assert!(ops.releases.is_empty());
    assert!(ops.shim_records.is_empty(), "the record goes either way");
    // The container's own lease is released.
    let (_t2, b2, _) = bundle(&asking("1g.10gb"));
    shim_create(&b2, "c2", "docker", &mut ops, &hooks("/run/r"), Some(1)).unwrap();
    let ShimDelete::Release(rec) = shim_delete_plan(&mut ops, "c2", Path::new("/run/r")).unwrap()
    else {
        panic!("the record of c2")
    };
    assert!(matches!(
        shim_deleted(&mut ops, &rec).unwrap(),
        Outcome::Released(ReleaseOutcome::Destroyed { .. } | ReleaseOutcome::Gone { .. })
    ));
    assert_eq!(ops.releases, [2]);
}
