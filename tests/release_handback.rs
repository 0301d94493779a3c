//! `migrun release N --if-handover-pending`, what JupyterHub's spawner runs after a failed start: it frees
//! a lease only while the process its hand-over record names still holds it; a lease its container took
//! over is kept (exit 0, one line naming the holder); an unknown lease and bad flags fail as documented.
//! The takeover is the real one (`migrun hook prestart` with the token in the config's env); simulated GPUs.

mod alloc_support;

use alloc_support::{instances, leases, Sim};
use serde_json::Value;
use std::io::Write;
use std::process::{Child, Command, Stdio};

/// A live process standing for the hub, holding the hand-over leases; killed when dropped.
struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hub() -> Hub {
    Hub(Command::new("sleep").arg("60").spawn().unwrap())
}

/// `migrun alloc --handover` held by `hub`: (lease id, token, MIG UUID).
fn handover(sim: &Sim, hub: &Hub) -> (String, String, String) {
    let pid = hub.0.id().to_string();
    let args = [
        "alloc",
        "--profile",
        "1g.10gb",
        "--for-uid",
        "2001",
        "--holder-pid",
        &pid,
        "--handover",
        "--json",
    ];
    let doc: Value = serde_json::from_str(&sim.ok(&args)).unwrap();
    (
        doc["lease"].to_string(),
        doc["handover"]["token"].as_str().unwrap().to_string(),
        doc["mig_uuid"].as_str().unwrap().to_string(),
    )
}

/// `migrun release <lease> --if-handover-pending [--json]`: (exit code, stdout, stderr).
fn give_back(sim: &Sim, lease: &str, json: bool) -> (i32, String, String) {
    let mut args = vec!["release", lease, "--if-handover-pending"];
    if json {
        args.push("--json");
    }
    let out = sim.run(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The container's prestart hook takes lease `lease` over with `token`, as it does for docker's
/// container (whose config the shim gave the slice `mig`).
fn take_over(sim: &Sim, lease: &str, token: &str, mig: &str) {
    let bundle = sim.tmp.path().join(format!("bundle-{lease}"));
    std::fs::create_dir_all(&bundle).unwrap();
    let env = [
        "MIGRUN_PROFILE=1g.10gb".to_string(),
        format!("MIGRUN_LEASE={lease}"),
        format!("MIGRUN_HANDOVER={token}"),
        format!("NVIDIA_VISIBLE_DEVICES={mig}"),
    ];
    let config = serde_json::json!({ "process": { "env": env } });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    let state = serde_json::json!({
        "ociVersion": "1.0.2", "id": format!("notebook-{lease}"), "status": "creating",
        "pid": std::process::id(), "bundle": bundle,
    });
    let mut child = sim
        .cmd(&["hook", "prestart"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prestart takes the lease over: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn holder_of(sim: &Sim, lease: &str) -> Option<Value> {
    leases(&sim.status())
        .into_iter()
        .find(|l| l["id"].as_u64() == lease.parse().ok())
        .map(|l| l["holder"].clone())
}

#[test]
fn gives_back_only_a_pending_hand_over() {
    let sim = Sim::new("h100-80gb");
    let hub = hub();

    // Still held by the hub's process: released, instance destroyed, hand-over record gone.
    let (first, _, _) = handover(&sim, &hub);
    let (code, out, err) = give_back(&sim, &first, false);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("lease {first} released")), "{out}");
    assert!(holder_of(&sim, &first).is_none());
    assert!(!sim
        .state_dir()
        .join(format!("handover/{first}.json"))
        .exists());
    assert!(instances(&sim.status()).is_empty());

    // Taken over by its container: kept, exit 0, one line naming the container; JSON says the same.
    let (second, token, mig) = handover(&sim, &hub);
    take_over(&sim, &second, &token, &mig);
    assert_eq!(holder_of(&sim, &second).unwrap()["kind"], "container");
    let (code, out, err) = give_back(&sim, &second, false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(
        out.contains(&format!("lease {second} not released"))
            && out.contains(&format!("container notebook-{second}")),
        "{out}"
    );
    let (code, out, err) = give_back(&sim, &second, true);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["outcome"]["result"], "not-released", "{doc}");
    assert_eq!(doc["outcome"]["holder"]["kind"], "container", "{doc}");
    assert_eq!(holder_of(&sim, &second).unwrap()["kind"], "container");

    // A lease that never had a hand-over is not the spawner's to give back either.
    let (_, manual) = sim.alloc(&["--profile", "1g.10gb"]);
    let (code, out, _) = give_back(&sim, &manual.to_string(), false);
    assert_eq!(code, 0);
    assert!(
        out.contains("held by manual and has no pending hand-over"),
        "{out}"
    );
    assert_eq!(leases(&sim.status()).len(), 2);

    // Unknown lease: what a plain release says (exit 2), in JSON mode too.
    for json in [false, true] {
        let (code, _, err) = give_back(&sim, "999", json);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("no lease 999"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let plain = sim.run(&["release", "999"]);
    assert_eq!(plain.status.code(), Some(2));
}

#[test]
fn refuses_what_is_not_a_root_spawners_lease_id() {
    let sim = Sim::new("h100-80gb");
    let hub = hub();
    let (lease, _, _) = handover(&sim, &hub);
    let before = sim.snapshot_files();
    for target in ["abc", "+1", "MIG-0", ""] {
        let (code, _, err) = give_back(&sim, target, false);
        assert_eq!(code, 2, "{target:?}: {err}");
        assert!(
            err.contains("--if-handover-pending takes the lease id"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // A user through sudo may release their own lease, but not a spawner's pending hand-over.
    let out = sim
        .cmd(&["release", &lease, "--if-handover-pending"])
        .env("SUDO_UID", "2001")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("`migrun release --if-handover-pending` is not open to a user through sudo"),
        "{err}"
    );
    assert_eq!(sim.snapshot_files(), before, "nothing changed");
    assert_eq!(holder_of(&sim, &lease).unwrap()["kind"], "process");
}
