//! The shim taking over a lease a spawner made with `migrun alloc --handover` (lease and token in the
//! container's env, as docker passes them): once, with the right token, while the spawner holds it.

use super::*;

fn hooks() -> ShimHooks {
    ShimHooks {
        bin: "/usr/bin/migrun".into(),
        env: vec![],
        timeout_s: None,
        binds_itself: None,
    }
}

/// A config as MigrunSpawner gives docker: the request, the lease and the token, all as env.
fn handed(lease: &str, token: &str) -> Value {
    let mut spec = asking("1g.10gb");
    spec["process"]["env"] = json!([
        "PATH=/bin",
        "MIGRUN_PROFILE=1g.10gb",
        format!("MIGRUN_LEASE={lease}"),
        format!("MIGRUN_HANDOVER={token}"),
    ]);
    spec
}

fn create(ops: &mut FakeOps, b: &Path, id: &str) -> Result<Outcome, OciError> {
    shim_create(b, id, "docker", ops, &hooks(), Some(std::process::id()))
}

#[test]
fn the_shim_takes_a_spawners_lease_once_with_its_token_and_keeps_its_uid() {
    let hub = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let token = binding::new_token().unwrap();
    let mut ops = FakeOps::default();
    let mut l = lease(4, "MIG-4", hub.clone());
    l.uid = 2001;
    ops.leases.push(l);
    ops.handovers.push(Handover {
        lease: 4,
        token: token.clone(),
        holder: hub.clone(),
        created_at: 0,
    });

    // A wrong token, or none, takes nothing and changes nothing.
    let wrong = binding::new_token().unwrap();
    let (_tw, bw, bytes) = bundle(&handed("4", &wrong));
    let e = create(&mut ops, &bw, "thief").unwrap_err().to_string();
    assert!(
        e.contains("hand-over token is not the one migrun recorded"),
        "{e}"
    );
    assert_eq!(std::fs::read(bw.join("config.json")).unwrap(), bytes);
    assert_eq!(ops.leases[0].holder, hub);
    assert_eq!(ops.allocations, 0);

    // The right token: the container holds the lease, still charged to the user; the token is gone
    // from config.json before the runtime reads it.
    let (_t, b, _) = bundle(&handed("4", &token));
    let out = create(&mut ops, &b, "server").unwrap();
    assert_eq!(
        out,
        Outcome::Adopted {
            lease: 4,
            mig_uuid: "MIG-4".into()
        }
    );
    assert!(binding::bound_to(
        &ops.leases[0],
        "server",
        &b.canonicalize().unwrap()
    ));
    assert_eq!(ops.leases[0].uid, 2001);
    assert!(ops.handovers.is_empty(), "the record is used up");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(handover_token(&cfg).unwrap(), None);
    assert_eq!(env_lookup(&cfg, NVIDIA_VISIBLE_DEVICES), ["MIG-4"]);
    assert!(is_migrun_hook(&cfg["hooks"]["poststop"][0]));
    // A retried create of the same container finds its lease; prestart records the init pid.
    assert!(matches!(
        create(&mut ops, &b, "server").unwrap(),
        Outcome::Leased {
            lease: 4,
            reused: true,
            ..
        }
    ));
    assert!(matches!(
        prestart(&state("server", &b), &mut ops, Some("docker")).unwrap(),
        Outcome::Adopted { lease: 4, .. }
    ));

    // The token is good once: another container bringing it is refused.
    let (_t2, b2, _) = bundle(&handed("4", &token));
    let e = create(&mut ops, &b2, "second").unwrap_err().to_string();
    assert!(e.contains("is held by container server"), "{e}");
    assert_eq!(ops.allocations, 0);
    assert!(ops.releases.is_empty());
}

#[test]
fn prestart_takes_a_spawners_lease_with_the_token_in_env_too() {
    let hub = Holder::Process {
        pid: 1,
        start_time: 1,
    };
    let token = binding::new_token().unwrap();
    let mut ops = FakeOps::default();
    ops.leases.push(lease(3, "MIG-3", hub.clone()));
    ops.handovers.push(Handover {
        lease: 3,
        token: token.clone(),
        holder: hub,
        created_at: 0,
    });
    // The hooks path (no shim): the config must also name the device, as for podman's precreate.
    let mut spec = handed("3", &token);
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("NVIDIA_VISIBLE_DEVICES=MIG-3"));
    let (_t, b, _) = bundle(&spec);
    assert!(matches!(
        prestart(&state("c", &b), &mut ops, Some("runc")).unwrap(),
        Outcome::Adopted { lease: 3, .. }
    ));
    assert!(binding::bound_to(
        &ops.leases[0],
        "c",
        &b.canonicalize().unwrap()
    ));
    assert!(ops.handovers.is_empty());
}
