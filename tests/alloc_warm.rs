//! The warm pool's background refill (issue 23) on the simulator: an allocation that takes a warm instance starts a
//! detached `migrun __refill-warm` that makes another, without anyone running gc; and nothing is made while a request
//! waits in the queue, which then gets the room.

mod alloc_support;

use alloc_support::{check_invariants, Sim};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// (GPU index, MIG UUID) of every idle instance migrun keeps (status owner `kept`).
fn kept(status: &Value) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for g in status["gpus"].as_array().unwrap() {
        for i in g["instances"].as_array().unwrap() {
            if i["owner"]["kind"] == "kept" {
                out.push((
                    g["index"].as_u64().unwrap(),
                    i["mig_uuid"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

/// Wait up to `limit` for `f` to hold.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn with_warm(spec: &str) -> Sim {
    let sim = Sim::new(spec);
    std::fs::write(sim.config_path(), "warm = { \"1g.10gb\" = 1 }\n").unwrap();
    sim
}

#[test]
fn a_taken_warm_instance_is_replaced_without_running_gc() {
    let sim = with_warm("h100-80gb");
    sim.ok(&["gc"]);
    let pool = kept(&sim.status());
    assert_eq!(pool.len(), 1, "gc made the pool: {pool:?}");
    let (uuid, _) = sim.alloc(&["--profile", "1g.10gb"]);
    assert_eq!(uuid, pool[0].1, "the request took the warm instance");
    // No gc from here on: the allocation started the refill in the background.
    let refilled = eventually(Duration::from_secs(20), || {
        let k = kept(&sim.status());
        k.len() == 1 && k[0].1 != uuid
    });
    assert!(
        refilled,
        "no new warm instance appeared: {:#}",
        sim.status()
    );
    check_invariants(&sim.status(), false);
    // The next request gets the new warm instance, not a create.
    let next = kept(&sim.status())[0].1.clone();
    let (again, _) = sim.alloc(&["--profile", "1g.10gb"]);
    assert_eq!(again, next);
}

#[test]
fn no_warm_instance_is_made_while_a_request_waits_and_the_waiter_gets_the_room() {
    let sim = with_warm("h100-80gb:2");
    sim.ok(&["gc"]);
    let pool = kept(&sim.status());
    assert_eq!(pool.len(), 1, "{pool:?}");
    let warm_gpu = pool[0].0;
    let other = (1 - warm_gpu).to_string();
    // The other GPU is half taken; a whole-GPU request for it waits (its ticket holds that GPU back).
    let (_, half) = sim.alloc(&["--profile", "3g.40gb", "--gpu", &other]);
    let waiter = sim
        .cmd(&[
            "alloc",
            "--profile",
            "7g.80gb",
            "--gpu",
            &other,
            "--wait=60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || sim.status()["waiting"]
            .as_array()
            .is_some_and(|w| !w.is_empty())),
        "the waiter never queued"
    );
    // A request on the warm GPU takes the warm instance: that starts the refill, which must make nothing now.
    let (taken, _) = sim.alloc(&["--profile", "1g.10gb", "--gpu", &warm_gpu.to_string()]);
    assert_eq!(taken, pool[0].1);
    // The refill, run here too (refills run one at a time), says why it made nothing.
    let out = sim.run(&["__refill-warm"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !eventually(Duration::from_secs(2), || !kept(&sim.status()).is_empty()),
        "a warm instance was made while a request waited: {:#}",
        sim.status()
    );
    // The room the waiter needs comes free: it gets it.
    sim.ok(&["release", &half.to_string()]);
    let o = waiter.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status = sim.status();
    check_invariants(&status, false);
    assert!(
        status["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["profile"] == "7g.80gb"),
        "{status:#}"
    );
}

/// `migrun status` (text and --json) shows warm instances (idle, migrun's, kept) and releasing ones (lease ended,
/// idle, destroy pending), and tells a releasing instance from one still draining because it runs processes.
#[test]
fn status_shows_warm_and_releasing_instances() {
    let sim = with_warm("h100-80gb");
    sim.ok(&["gc"]);
    let (uuid, id) = sim.alloc(&["--profile", "3g.40gb"]);
    // The release is cut short right after the lease is marked draining: its destroy is pending.
    let out = sim
        .cmd(&["release", &id.to_string()])
        .env("MIGRUN_TEST_CRASH_AT", "release-after-mark-draining")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let status = sim.status();
    let inst = |uuid: &str| -> Value {
        status["gpus"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["mig_uuid"] == uuid)
            .cloned()
            .unwrap()
    };
    let warm = kept(&status);
    assert_eq!(warm.len(), 1, "{status:#}");
    assert_eq!(inst(&warm[0].1)["releasing"], false);
    let r = inst(&uuid);
    assert_eq!(r["owner"]["draining"], true, "{r:#}");
    assert_eq!(r["releasing"], true, "{r:#}");
    let text = sim.ok(&["status"]);
    assert!(text.contains("free (migrun's, kept warm)"), "{text}");
    assert!(
        text.contains(&format!(
            "lease {id} releasing (destroyed in the background)"
        )),
        "{text}"
    );
    // Busy: still draining, not releasing.
    let gi = r["gi"].as_u64().unwrap() as u32;
    sim.set_processes(0, gi, 1);
    let busy = sim.status();
    let b = busy["gpus"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["mig_uuid"] == uuid.as_str())
        .cloned()
        .unwrap();
    assert_eq!(b["releasing"], false, "{b:#}");
    let text = sim.ok(&["status"]);
    assert!(text.contains(&format!("lease {id} draining")), "{text}");
}
