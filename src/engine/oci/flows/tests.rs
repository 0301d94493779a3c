//! Unit tests of the hook flows over a fake lease store: every path, markers, failures.

use super::super::binding::{self, Handover};
use super::super::test_support::*;
use super::*;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Lease operations over a Vec, counting what was done.
#[derive(Default)]
struct FakeOps {
    leases: Vec<Lease>,
    handovers: Vec<Handover>,
    next: LeaseId,
    fail_alloc: Option<&'static str>,
    allocations: u32,
    releases: Vec<LeaseId>,
    /// What `cdi_edits` answers: `None` injects by env only; `Some(Err)` fails reading the spec.
    cdi: Option<Result<crate::cdi::types::ContainerEdits, &'static str>>,
    shim_records: Vec<super::binding::ShimRecord>,
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
    fn leases_of_container(&mut self, id: &str) -> Result<Vec<Lease>, OpsError> {
        Ok(self
            .leases
            .iter()
            .filter(|l| matches!(&l.holder, Holder::Container { id: c, .. } if c == id))
            .cloned()
            .collect())
    }
    fn set_holder_if(
        &mut self,
        id: LeaseId,
        check: LeaseCheck,
        to: Holder,
    ) -> Result<bool, OpsError> {
        match self.leases.iter_mut().find(|l| l.id == id && check(l)) {
            Some(l) => {
                l.holder = to;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError> {
        self.release_if(id, &|_| true)
    }
    fn release_if(&mut self, id: LeaseId, check: LeaseCheck) -> Result<ReleaseOutcome, OpsError> {
        let Some(at) = self.leases.iter().position(|l| l.id == id && check(l)) else {
            return Ok(ReleaseOutcome::NoLease);
        };
        let l = self.leases.remove(at);
        self.releases.push(id);
        Ok(ReleaseOutcome::Destroyed {
            lease: id,
            mig_uuid: l.mig_uuid,
        })
    }
    fn record_handover(&mut self, h: &Handover) -> Result<(), OpsError> {
        self.handovers.retain(|x| x.lease != h.lease);
        self.handovers.push(h.clone());
        Ok(())
    }
    fn handover(&mut self, lease: LeaseId) -> Result<Option<Handover>, OpsError> {
        Ok(self.handovers.iter().find(|h| h.lease == lease).cloned())
    }
    fn drop_handover(&mut self, lease: LeaseId) -> Result<(), OpsError> {
        self.handovers.retain(|h| h.lease != lease);
        Ok(())
    }
    fn record_shim(&mut self, r: &super::binding::ShimRecord) -> Result<(), OpsError> {
        self.shim_records.retain(|x| x.id != r.id);
        self.shim_records.push(r.clone());
        Ok(())
    }
    fn shim_record(&mut self, id: &str) -> Result<Option<super::binding::ShimRecord>, OpsError> {
        Ok(self.shim_records.iter().find(|r| r.id == id).cloned())
    }
    fn drop_shim_record(&mut self, id: &str) -> Result<(), OpsError> {
        self.shim_records.retain(|r| r.id != id);
        Ok(())
    }
    fn cdi_edits(
        &mut self,
        _lease: &Lease,
    ) -> Result<Option<crate::cdi::types::ContainerEdits>, OpsError> {
        match &self.cdi {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e.clone())),
            Some(Err(e)) => Err((*e).into()),
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
    // Bound to the id and the bundle runc reported; the engine is never read from annotations.
    let canonical = b.canonicalize().unwrap();
    assert_eq!(id, "c1");
    assert_eq!(*engine, binding::engine_tag("runc", &canonical));
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
        binds_itself: None,
    };
    assert_eq!(
        shim_create(&b, "c", "docker", &mut ops, &hooks, None).unwrap(),
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
        binds_itself: None,
    };
    let out = shim_create(
        &b,
        "ctr",
        "docker",
        &mut ops,
        &hooks,
        Some(std::process::id()),
    )
    .unwrap();
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
    let out = shim_create(
        &b,
        "ctr",
        "docker",
        &mut ops,
        &hooks,
        Some(std::process::id()),
    )
    .unwrap();
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

fn run_precreate(ops: &mut FakeOps, spec: &Value, podman: &Holder) -> Value {
    let mut out = Vec::new();
    let input = serde_json::to_vec(spec).unwrap();
    let o = precreate(&input, ops, podman.clone(), &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert!(matches!(o, Outcome::Leased { .. }));
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn precreate_hands_its_lease_over_only_with_its_token() {
    let mut ops = FakeOps::default();
    let podman = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let mut spec = asking("1g.10gb");
    spec["annotations"]["io.container.manager"] = json!("libpod");
    spec["annotations"]["migrun.lease"] = json!("42");
    spec["annotations"]["migrun.handover"] = json!("forged");
    let cfg = run_precreate(&mut ops, &spec, &podman);
    assert_eq!(
        lease_marker(&cfg).unwrap(),
        Some(1),
        "the forged 42 is gone"
    );
    assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-1"]);
    let token = handover_token(&cfg).unwrap().unwrap();
    assert_ne!(token, "forged");
    assert_eq!(ops.handovers.len(), 1);
    assert_eq!(ops.handovers[0].token, token);
    assert_eq!(ops.handovers[0].holder, podman);

    // A config with the marker and the device but another token gets nothing, and changes nothing.
    let mut wrong = cfg.clone();
    wrong["annotations"]["migrun.handover"] = json!(binding::new_token().unwrap());
    let (_tw, bw, bytes) = bundle(&wrong);
    let e = prestart(&state("thief", &bw), &mut ops, Some("podman")).unwrap_err();
    assert!(
        e.to_string().contains("hand-over token is not the one"),
        "{e}"
    );
    assert_eq!(std::fs::read(bw.join("config.json")).unwrap(), bytes);
    assert_eq!(
        poststop(&state("thief", &bw), &mut ops).unwrap(),
        Outcome::Released(ReleaseOutcome::NoLease)
    );
    assert_eq!(ops.leases[0].holder, podman);

    // The right token: the lease is bound to the container (id and bundle), the record dropped.
    let (_t, b, _) = bundle(&cfg);
    assert!(matches!(
        prestart(&state("p1", &b), &mut ops, None).unwrap(),
        Outcome::Adopted { lease: 1, .. }
    ));
    let canonical = b.canonicalize().unwrap();
    assert!(binding::bound_to(&ops.leases[0], "p1", &canonical));
    assert!(
        matches!(&ops.leases[0].holder, Holder::Container { engine, pid: Some(_), .. } if crate::engine::engine_family(engine) == "podman")
    );
    assert!(ops.handovers.is_empty());
    // The token is good once: a copy of the config in another container gets nothing.
    let (_t3, b3, _) = bundle(&cfg);
    let e = prestart(&state("p1-copy", &b3), &mut ops, None).unwrap_err();
    assert!(matches!(e, OciError::StaleMarker { .. }), "{e}");
    assert!(binding::bound_to(&ops.leases[0], "p1", &canonical));
    // The container's own poststop releases it.
    assert!(matches!(
        poststop(&state("p1", &b), &mut ops).unwrap(),
        Outcome::Released(ReleaseOutcome::Destroyed { lease: 1, .. })
    ));
}

#[test]
fn poststop_frees_a_precreate_lease_never_handed_over_only_with_its_token() {
    let mut ops = FakeOps::default();
    let podman = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let cfg = run_precreate(&mut ops, &asking("1g.10gb"), &podman);
    // The same marker without the token (a container naming the lease) leaves it alone.
    let mut forged = cfg.clone();
    forged["annotations"]
        .as_object_mut()
        .unwrap()
        .shift_remove("migrun.handover");
    let (_tf, bf, _) = bundle(&forged);
    let st = serde_json::to_vec(&json!({"id": "x", "status": "stopped", "bundle": bf})).unwrap();
    assert_eq!(
        poststop(&st, &mut ops).unwrap(),
        Outcome::Released(ReleaseOutcome::NoLease)
    );
    assert_eq!(ops.leases.len(), 1);
    // podman's own container failed before prestart: its config carries the token.
    let (_t, b, _) = bundle(&cfg);
    let st = serde_json::to_vec(&json!({"id": "p1", "status": "stopped", "bundle": b})).unwrap();
    assert!(matches!(
        poststop(&st, &mut ops).unwrap(),
        Outcome::Released(ReleaseOutcome::Destroyed { lease: 1, .. })
    ));
    assert!(ops.handovers.is_empty());
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
    assert!(ops.handovers.is_empty());
    assert_eq!(ops.releases, [1]);
}

/// A container decides its annotations and env: none of them, alone or together (the engine's
/// `io.container.manager`, the victim's MIG UUID, a guessed token), takes or frees another's lease.
#[test]
fn forged_markers_neither_take_nor_free_another_holders_lease() {
    let mut ops = FakeOps::default();
    let (_tv, victim_bundle, _) = bundle(&asking("1g.10gb"));
    let victim_bundle = victim_bundle.canonicalize().unwrap();
    ops.leases.push(lease(
        5,
        "MIG-5",
        binding::container_holder("victim", "docker", &victim_bundle, None),
    ));
    let process = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    ops.leases.push(lease(6, "MIG-6", process.clone()));
    ops.leases.push(lease(7, "MIG-7", Holder::Manual));
    ops.handovers.push(Handover {
        lease: 6,
        token: binding::new_token().unwrap(),
        holder: process,
        created_at: 0,
    });
    let before = ops.leases.clone();
    for (marker, uuid) in [
        ("5", "MIG-5"),
        ("6", "MIG-6"),
        ("7", "MIG-7"),
        ("77", "MIG-77"),
    ] {
        for podman in [false, true] {
            let mut spec = asking("1g.10gb");
            spec["annotations"]["migrun.lease"] = json!(marker);
            if podman {
                spec["annotations"]["io.container.manager"] = json!("libpod");
                spec["annotations"]["migrun.handover"] = json!(binding::new_token().unwrap());
            }
            spec["process"]["env"] = json!([
                format!("NVIDIA_VISIBLE_DEVICES={uuid}"),
                format!("MIGRUN_LEASE={marker}")
            ]);
            let (_t, b, bytes) = bundle(&spec);
            // Even as "the victim": the same id in another bundle is another container.
            for id in ["me", "victim"] {
                let e = prestart(&state(id, &b), &mut ops, None).unwrap_err();
                assert!(matches!(e, OciError::StaleMarker { .. }), "{e}");
                assert!(!e.to_string().contains('\n'));
                assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
                // runc runs poststop for the container prestart refused.
                assert_eq!(
                    poststop(&state(id, &b), &mut ops).unwrap(),
                    Outcome::Released(ReleaseOutcome::NoLease),
                    "{marker} {podman} {id}"
                );
            }
        }
    }
    assert_eq!(ops.allocations, 0);
    assert!(ops.releases.is_empty());
    assert_eq!(ops.leases, before);
    assert_eq!(ops.handovers.len(), 1);
}

#[test]
fn a_lease_is_reused_and_released_only_for_the_same_id_and_bundle() {
    let mut ops = FakeOps::default();
    let (_t1, b1, _) = bundle(&asking("1g.10gb"));
    let (_t2, b2, _) = bundle(&asking("1g.10gb"));
    assert!(matches!(
        prestart(&state("c", &b1), &mut ops, None).unwrap(),
        Outcome::Leased { lease: 1, .. }
    ));
    // Same id under another runtime root (another bundle): a lease of its own, not lease 1.
    assert!(matches!(
        prestart(&state("c", &b2), &mut ops, None).unwrap(),
        Outcome::Leased {
            lease: 2,
            reused: false,
            ..
        }
    ));
    assert!(matches!(
        poststop(&state("c", &b2), &mut ops).unwrap(),
        Outcome::Released(ReleaseOutcome::Destroyed { lease: 2, .. })
    ));
    assert_eq!(ops.leases.len(), 1);
    assert!(binding::bound_to(
        &ops.leases[0],
        "c",
        &b1.canonicalize().unwrap()
    ));
    // The shim's undo after a failed create releases only what is still bound to that container.
    assert_eq!(
        shim_create_failed(&mut ops, "c", &b2, 1).unwrap(),
        Outcome::Released(ReleaseOutcome::NoLease)
    );
    assert!(matches!(
        shim_create_failed(&mut ops, "c", &b1, 1).unwrap(),
        Outcome::Released(ReleaseOutcome::Destroyed { lease: 1, .. })
    ));
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

mod cdi;
mod shimbind;
mod spawner;
