//! The acceptance scenarios of allocation, written once and run on every backend: through `--simulate`
//! (tests/alloc_concurrency.rs, tests/alloc_crash.rs) and through the fake NVML library (tests/alloc_fake_nvml.rs).

use super::{check_invariants, instances, leases, parse_alloc_line, Sim};
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fault settings that make the backend fail a call: (variable, value).
pub struct Faults {
    /// Every compute-instance create fails with INSUFFICIENT_RESOURCES.
    pub ci: (&'static str, &'static str),
    /// The compute-instance create fails, and so does the GI destroy of the rollback (once).
    pub ci_and_rollback: (&'static str, &'static str),
}

pub const SIM_FAULTS: Faults = Faults {
    ci: ("MIGRUN_TEST_FAIL", "create-ci=INSUFFICIENT_RESOURCES"),
    ci_and_rollback: ("MIGRUN_TEST_FAIL", "create-ci,destroy-gi"),
};

pub const FAKE_NVML_FAULTS: Faults = Faults {
    ci: (
        "MIGRUN_FAKE_NVML_FAIL",
        "nvmlGpuInstanceCreateComputeInstance:INSUFFICIENT_RESOURCES",
    ),
    ci_and_rollback: (
        "MIGRUN_FAKE_NVML_FAIL",
        "nvmlGpuInstanceCreateComputeInstance:UNKNOWN,nvmlGpuInstanceDestroy:UNKNOWN:1",
    ),
};

const N: usize = 64;
const SLOTS: usize = 56;

fn spawn_all(sim: &Sim, extra: &[&str]) -> Vec<Child> {
    // Start every process before waiting for any, so they really race for the lock.
    (0..N)
        .map(|_| {
            let mut args = vec!["alloc", "--profile", "1g.10gb"];
            args.extend_from_slice(extra);
            sim.cmd(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn migrun alloc")
        })
        .collect()
}

/// 64 `migrun alloc --profile 1g.10gb` at once on an h100-80gb:8: exactly 56 win, 8 get no room,
/// and the leases and the device agree.
pub fn race_64(sim: &Sim) {
    let started = Instant::now();
    let outs: Vec<_> = spawn_all(sim, &[])
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut uuids = HashSet::new();
    let mut no_room = 0;
    for o in &outs {
        if o.status.success() {
            let (uuid, _) = parse_alloc_line(&String::from_utf8_lossy(&o.stdout));
            assert!(uuids.insert(uuid.clone()), "{uuid} handed out twice");
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(3), "no-room exit code: {err}");
            assert!(err.contains("no room for 1g.10gb on 8 GPUs"), "{err}");
            no_room += 1;
        }
    }
    assert_eq!((uuids.len(), no_room), (SLOTS, N - SLOTS));

    // The registry and the device agree: 56 instances, each with exactly one lease, the printed UUIDs.
    let status = sim.status();
    check_invariants(&status, true);
    let on_device: HashSet<String> = instances(&status)
        .into_iter()
        .map(|(_, _, u)| u.unwrap())
        .collect();
    assert_eq!(on_device, uuids);
    let leased: HashSet<String> = leases(&status)
        .iter()
        .map(|l| l["mig_uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(leased, uuids);
    eprintln!("64 racing allocations took {:?}", started.elapsed());
}

/// The same 64 with `--wait=60` while the holders (this test) keep each instance briefly and
/// release it: all 64 are served, never one instance twice at a time.
pub fn wait_64(sim: Arc<Sim>) {
    let started = Instant::now();
    let children = spawn_all(&sim, &["--wait=60"]);
    // `held` is what is handed out right now; a UUID granted while it is still held would be a double allocation.
    let held = Arc::new(Mutex::new(HashSet::<String>::new()));
    let granted = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| {
            let (sim, held, granted) = (sim.clone(), held.clone(), granted.clone());
            std::thread::spawn(move || {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "waiter {i} was not served: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let (uuid, lease) = parse_alloc_line(&String::from_utf8_lossy(&out.stdout));
                {
                    let mut h = held.lock().unwrap();
                    assert!(h.insert(uuid.clone()), "{uuid} is already held");
                    assert!(h.len() <= SLOTS, "more instances than slots");
                }
                granted.lock().unwrap().push(uuid.clone());
                std::thread::sleep(Duration::from_millis(50 + (i as u64 % 7) * 20));
                held.lock().unwrap().remove(&uuid);
                sim.ok(&["release", &lease.to_string()]);
            })
        })
        .collect();
    // Meanwhile, the registry and the device must agree at every look.
    let mut looks = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        check_invariants(&sim.status(), false);
        looks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in threads {
        t.join().expect("waiter thread");
    }
    let granted = granted.lock().unwrap();
    assert_eq!(granted.len(), N);
    assert_eq!(
        granted.iter().collect::<HashSet<_>>().len(),
        N,
        "every grant is a distinct instance"
    );
    let status = sim.status();
    check_invariants(&status, true);
    assert!(leases(&status).is_empty() && instances(&status).is_empty());
    eprintln!(
        "64 waiting allocations served in {:?} ({looks} consistency looks)",
        started.elapsed()
    );
}

pub fn crash(sim: &Sim, step: &str, args: &[&str]) {
    let out = sim
        .cmd(args)
        .env("MIGRUN_TEST_CRASH_AT", step)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "migrun {args:?} should have been killed at {step}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A machine with one lease already (so repairs must leave other leases alone); returns its MIG UUID.
fn with_one_lease(sim: &Sim) -> String {
    sim.alloc(&["--profile", "2g.20gb"]).0
}

fn assert_untouched(sim: &Sim, keep: &str) {
    let status = sim.status();
    assert!(
        leases(&status).iter().any(|l| l["mig_uuid"] == keep),
        "the other lease survived"
    );
}

/// Killed at every step of allocate; `migrun gc` (or, with `by_gc = false`, the next allocation) repairs.
/// Killed right after the driver created the GI but before its id was journaled (`after-create-gi`), the GI
/// cannot be told from one someone else made at that place, so it is left alone and reported, never destroyed.
pub fn killed_during_allocate(make: &dyn Fn() -> Sim, by_gc: bool) {
    for step in migrun::alloc::testhook::ALLOC_STEPS {
        let sim = make();
        let keep = with_one_lease(&sim);
        crash(&sim, step, &["alloc", "--profile", "3g.40gb"]);
        // The one step whose leftover (a GI without a CI, no lease) stays on the device.
        let unbound = *step == "after-create-gi";
        if !by_gc {
            // No gc: the next allocation reconciles first.
            sim.alloc(&["--profile", "1g.10gb"]);
            check_invariants(&sim.status(), !unbound);
            assert_untouched(&sim, &keep);
            continue;
        }
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, !unbound);
        assert_untouched(&sim, &keep);
        // Either the allocation completed (its lease was written) or nothing of it is left.
        let n = leases(&status).len();
        if *step == "after-write-lease" {
            assert_eq!(n, 2, "the lease was written before the crash");
        } else {
            assert_eq!(n, 1, "after {step}: {gc}");
        }
        if unbound {
            assert_eq!(instances(&status).len(), n + 1, "after {step}: {gc}");
            assert!(
                gc.contains("migrun cannot tell, so it leaves it alone"),
                "{gc}"
            );
            assert!(
                std::fs::read_dir(sim.state_dir().join("intents"))
                    .unwrap()
                    .next()
                    .is_none(),
                "the intent is dropped"
            );
        } else {
            assert_eq!(
                instances(&status).len(),
                n,
                "after {step} gc destroyed the half-made instance: {gc}"
            );
        }
        // And the machine works normally afterwards.
        let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
        sim.ok(&["release", &id.to_string()]);
        check_invariants(&sim.status(), !unbound);
    }
}

/// Killed at every step of release; `migrun gc` finishes destroying the instance.
pub fn killed_during_release(make: &dyn Fn() -> Sim) {
    for step in migrun::alloc::testhook::RELEASE_STEPS {
        let sim = make();
        let keep = with_one_lease(&sim);
        let (uuid, id) = sim.alloc(&["--profile", "3g.40gb"]);
        crash(&sim, step, &["release", &id.to_string()]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert_untouched(&sim, &keep);
        assert_eq!(leases(&status).len(), 1, "after {step}: {gc}");
        assert!(
            instances(&status)
                .iter()
                .all(|(_, _, u)| u.as_deref() != Some(&*uuid)),
            "after {step} the released instance is destroyed: {gc}"
        );
        assert_eq!(instances(&status).len(), 1);
    }
}

/// Killed while evicting an idle kept instance to make room; gc finishes it.
pub fn killed_while_evicting(make: &dyn Fn() -> Sim) {
    for step in migrun::alloc::testhook::EVICT_STEPS {
        let sim = make();
        std::fs::write(sim.config_path(), "release = \"keep\"\n").unwrap();
        // A kept 7g.80gb fills the GPU; a 1g.10gb request must evict it first.
        let (_, id) = sim.alloc(&["--profile", "7g.80gb"]);
        sim.ok(&["release", &id.to_string()]);
        assert_eq!(instances(&sim.status()).len(), 1);
        crash(&sim, step, &["alloc", "--profile", "1g.10gb"]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert!(instances(&status).is_empty(), "after {step}: {gc}");
        assert!(
            std::fs::read_dir(sim.state_dir().join("created"))
                .unwrap()
                .next()
                .is_none(),
            "no stale record after {step}"
        );
        sim.alloc(&["--profile", "1g.10gb"]);
    }
}

/// A compute-instance create that fails leaves no GPU instance behind and says what happened; when
/// the rollback fails too, the message says so and gc destroys the GI.
pub fn ci_failure_leaves_nothing(sim: &Sim, faults: &Faults) {
    let keep = with_one_lease(sim);
    let before = sim.snapshot_files();
    let out = sim
        .cmd(&["alloc", "--profile", "3g.40gb"])
        .env(faults.ci.0, faults.ci.1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("creating the default compute instance in GI")
            && err.contains("3g.40gb at placement")
            && err.contains("INSUFFICIENT_RESOURCES")
            && err.contains("the GPU instance was destroyed again, nothing is left behind"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let status = sim.status();
    check_invariants(&status, true);
    assert_eq!(instances(&status).len(), 1, "no GI left behind");
    assert_untouched(sim, &keep);
    // Only the counters (lease id, generation, the metrics' `failed` allocation) and the machine's own
    // bookkeeping moved.
    let after = sim.snapshot_files();
    let changed: Vec<_> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| {
            !k.ends_with("next-id")
                && !k.ends_with("generation")
                && !k.ends_with("sim.json")
                && !k.ends_with("counters.json")
        })
        .collect();
    assert!(changed.is_empty(), "{changed:?}");

    let out = sim
        .cmd(&["alloc", "--profile", "3g.40gb"])
        .env(faults.ci_and_rollback.0, faults.ci_and_rollback.1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("also failed") && err.contains("migrun gc"),
        "{err}"
    );
    assert_eq!(instances(&sim.status()).len(), 2);
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains("repaired"), "{gc}");
    check_invariants(&sim.status(), true);
    assert_eq!(instances(&sim.status()).len(), 1);
}

/// A pre-existing instance is reused and never destroyed; one with processes is never destroyed or handed out.
pub fn ownership(sim: &Sim) {
    let (_, uuid) = sim.create_foreign(0, 9); // 3g.40gb
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "3g.40gb", "--json"])).unwrap();
    assert_eq!(json["mig_uuid"], uuid.as_str());
    assert_eq!(json["created"], false);
    let out = sim.ok(&["release", &json["lease"].to_string()]);
    assert!(out.contains("kept (migrun did not create it)"), "{out}");
    sim.ok(&["gc"]);
    assert!(instances(&sim.status())
        .iter()
        .any(|(_, _, u)| u.as_deref() == Some(&*uuid)));

    // Busy: the foreign one runs a job now; migrun creates the other half instead of handing it out.
    let gi = json["gi"].as_u64().unwrap() as u32;
    sim.set_processes(0, gi, 2);
    let (other, id) = sim.alloc(&["--profile", "3g.40gb"]);
    assert_ne!(other, uuid);
    let out = sim.run(&["alloc", "--profile", "3g.40gb"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not migrun's, busy"));
    // A created instance whose job outlives the lease drains and is destroyed only once idle.
    let other_gi = leases(&sim.status())[0]["gi"].as_u64().unwrap() as u32;
    sim.set_processes(0, other_gi, 1);
    let out = sim.ok(&["release", &id.to_string()]);
    assert!(out.contains("draining"), "{out}");
    sim.ok(&["gc"]);
    assert_eq!(instances(&sim.status()).len(), 2, "busy: not destroyed");
    sim.set_processes(0, other_gi, 0);
    assert!(sim.ok(&["gc"]).contains(&format!("lease {id} released")));
    let status = sim.status();
    assert_eq!(instances(&status).len(), 1, "the foreign one stays");
    check_invariants(&status, false);
}

/// The driver's create runs outside the allocation lock (issue 23): while one request waits on a slow create
/// (the simulated driver's latency model: 4 s per GI create), a request that needs no driver call (it reuses a
/// free instance) is served and done before the slow one ends; before, it waited for the lock. Ordering, not
/// timing, is asserted. Then a second slow create runs beside the first, at another placement, and every
/// invariant holds.
pub fn creates_run_outside_the_lock(sim: &Sim) {
    let (_, found) = sim.create_foreign(0, 19);
    sim.update(|m| m.latency = "create-gi=4000".parse().unwrap());
    let spawn = |profile: &str| {
        sim.cmd(&["alloc", "--profile", profile, "--gpu", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn migrun alloc")
    };
    let mut slow = spawn("3g.40gb");
    // Its reservation is journalled before the driver is called.
    let intents = sim.state_dir().join("intents");
    let t0 = Instant::now();
    while std::fs::read_dir(&intents).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no reservation appeared"
        );
        assert!(
            slow.try_wait().unwrap().is_none(),
            "the slow alloc ended early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (uuid, _) = sim.alloc(&["--profile", "1g.10gb", "--gpu", "0"]);
    assert_eq!(uuid, found, "the free instance is reused");
    assert!(
        slow.try_wait().unwrap().is_none(),
        "a reuse was served only after the slow create ended: the create held the lock"
    );
    // A second create beside the first: both in flight at once, never at the same placement.
    let other = spawn("2g.20gb");
    let (a, b) = (
        slow.wait_with_output().unwrap(),
        other.wait_with_output().unwrap(),
    );
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let status = sim.status();
    check_invariants(&status, true);
    assert_eq!(leases(&status).len(), 3);
    let placements: HashSet<u64> = leases(&status)
        .iter()
        .map(|l| l["placement"]["start"].as_u64().unwrap())
        .collect();
    assert_eq!(placements.len(), 3, "three placements: {status:#}");
}

/// Killed while taking over an instance still releasing (issue 23): the release's worker died at its claim, so
/// the instance is whole and releasing; the next request of its profile drops the draining lease and is killed
/// before it writes its own. gc then finds migrun's instance idle and unleased: it stays, migrun's (never
/// destroyed under a lease, never lost), and the next request reuses it.
pub fn killed_while_taking_over(make: &dyn Fn() -> Sim) {
    for step in migrun::alloc::testhook::TAKEOVER_STEPS {
        let sim = make();
        let (uuid, id) = sim.alloc(&["--profile", "3g.40gb"]);
        crash(&sim, "release-after-claim", &["release", &id.to_string()]);
        crash(&sim, step, &["alloc", "--profile", "3g.40gb"]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, false);
        assert!(leases(&status).is_empty(), "after {step}: {gc}");
        assert_eq!(instances(&status).len(), 1, "after {step}: {gc}");
        let (again, _) = sim.alloc(&["--profile", "3g.40gb"]);
        assert_eq!(again, uuid, "the instance is reused, not made again");
        check_invariants(&sim.status(), true);
    }
}

/// Killed at every step of gc's destroys, which run outside the allocation lock (issue 23): claimed under the lock,
/// the lock dropped, the destroy made. Each source of a destroy: a draining lease (its release killed right after
/// marking it), a dead holder's lease, and the instance of an interrupted allocation. The next gc finishes the job:
/// the instance is destroyed, the lease and intents are gone, and the other lease is untouched.
pub fn killed_during_gc_destroys(make: &dyn Fn() -> Sim) {
    for step in migrun::alloc::testhook::GC_STEPS {
        for source in ["draining", "dead holder", "interrupted"] {
            let sim = make();
            let keep = with_one_lease(&sim);
            match source {
                "draining" => {
                    let (_, id) = sim.alloc(&["--profile", "3g.40gb"]);
                    crash(
                        &sim,
                        "release-after-mark-draining",
                        &["release", &id.to_string()],
                    );
                }
                "dead holder" => {
                    let mut holder = std::process::Command::new("sleep")
                        .arg("30")
                        .spawn()
                        .unwrap();
                    let pid = holder.id().to_string();
                    sim.alloc(&["--profile", "3g.40gb", "--holder-pid", &pid]);
                    holder.kill().unwrap();
                    holder.wait().unwrap();
                }
                _ => crash(&sim, "after-journal-gi", &["alloc", "--profile", "3g.40gb"]),
            }
            assert_eq!(instances(&sim.status()).len(), 2, "{source}");
            crash(&sim, step, &["gc"]);
            let gc = sim.ok(&["gc"]);
            let status = sim.status();
            check_invariants(&status, true);
            assert_untouched(&sim, &keep);
            assert_eq!(leases(&status).len(), 1, "{source}, killed at {step}: {gc}");
            assert_eq!(
                instances(&status).len(),
                1,
                "{source}, killed at {step}: the instance is destroyed: {gc}"
            );
            for sub in ["intents", "created"] {
                let left = std::fs::read_dir(sim.state_dir().join(sub))
                    .unwrap()
                    .count();
                assert_eq!(
                    left,
                    usize::from(sub == "created"),
                    "{source}, killed at {step}: {sub}/ left: {gc}"
                );
            }
            // And the machine works normally afterwards: the room is free again.
            let (_, id) = sim.alloc(&["--profile", "3g.40gb"]);
            sim.ok(&["release", &id.to_string()]);
        }
    }
}

/// Killed at every step of gc's expiry of a kept instance (`keep_idle_s`), which destroys outside the lock: the next
/// gc destroys it and drops its record.
pub fn killed_while_expiring(make: &dyn Fn() -> Sim) {
    for step in migrun::alloc::testhook::EXPIRE_STEPS {
        let sim = make();
        std::fs::write(sim.config_path(), "release = \"keep\"\n").unwrap();
        let (_, id) = sim.alloc(&["--profile", "3g.40gb"]);
        sim.ok(&["release", &id.to_string()]);
        assert_eq!(instances(&sim.status()).len(), 1);
        std::fs::write(sim.config_path(), "release = \"keep\"\nkeep_idle_s = 0\n").unwrap();
        crash(&sim, step, &["gc"]);
        let gc = sim.ok(&["gc"]);
        let status = sim.status();
        check_invariants(&status, true);
        assert!(
            instances(&status).is_empty(),
            "killed at {step}, then gc: {gc}"
        );
        for sub in ["intents", "created"] {
            assert_eq!(
                std::fs::read_dir(sim.state_dir().join(sub))
                    .unwrap()
                    .count(),
                0,
                "killed at {step}: {sub}/ left: {gc}"
            );
        }
    }
}

/// gc's destroys run outside the allocation lock (issue 23): while gc destroys a draining instance under a slow
/// driver (the latency model: 4 s per GI destroy), a request that needs no driver call (it reuses a free instance) is
/// served before gc ends; before, it waited for the lock. Ordering, not timing, is asserted.
pub fn gc_destroys_run_outside_the_lock(sim: &Sim) {
    let (_, found) = sim.create_foreign(0, 19);
    let (_, id) = sim.alloc(&["--profile", "3g.40gb", "--gpu", "0"]);
    crash(
        sim,
        "release-after-mark-draining",
        &["release", &id.to_string()],
    );
    sim.update(|m| m.latency = "destroy-gi=4000".parse().unwrap());
    let mut gc = sim
        .cmd(&["gc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrun gc");
    // Its claim is journalled before the driver is called.
    let intents = sim.state_dir().join("intents");
    let t0 = Instant::now();
    while std::fs::read_dir(&intents).map_or(true, |mut d| d.next().is_none()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "no claim appeared");
        assert!(gc.try_wait().unwrap().is_none(), "gc ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (uuid, _) = sim.alloc(&["--profile", "1g.10gb", "--gpu", "0"]);
    assert_eq!(uuid, found, "the free instance is reused");
    assert!(
        gc.try_wait().unwrap().is_none(),
        "a reuse was served only after gc's destroy ended: the destroy held the lock"
    );
    let out = gc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc_out = String::from_utf8_lossy(&out.stdout);
    assert!(gc_out.contains(&format!("lease {id} released")), "{gc_out}");
    let status = sim.status();
    check_invariants(&status, true);
    assert_eq!(leases(&status).len(), 1);
    assert_eq!(instances(&status).len(), 1, "the drained instance is gone");
}
