//! Unit tests of the hook flows over a fake lease store: every path, markers, failures.

use super::super::test_support::*;
use super::*;
use serde_json::json;

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
    let st = serde_json::to_vec(&json!({"id": "p1", "status": "stopped", "bundle": b})).unwrap();
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
