//! The acceptance scenarios of compute-instance slices (issue 22), written once and run on every backend:
//! through `--simulate` (tests/alloc_ci.rs) and through the fake NVML library (tests/nvml_ci.rs). They use the
//! A100 80GB, whose `1c.3g.40gb` rows (ID, count) migrun's tables know: three fit in one `3g.40gb`.

use super::scenarios::crash;
use super::{leases, parse_alloc_line, Sim};
use migrun::gpu::sim::SimMachine;
use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Compute instances one `3g.40gb` GPU instance holds of `1c.3g.40gb` on an A100 80GB (the tables' count).
pub const PER_GI: usize = 3;

/// The simulated machine as it is now.
pub fn machine(sim: &Sim) -> SimMachine {
    sim.update(|m| m.clone())
}

/// (GPU index, GI id, CI count) of every GPU instance.
pub fn gis(sim: &Sim) -> Vec<(u32, u32, usize)> {
    machine(sim)
        .gpus
        .iter()
        .flat_map(|g| g.instances.iter().map(|i| (g.index, i.id, i.cis.len())))
        .collect()
}

fn dir_empty(sim: &Sim, sub: &str) -> bool {
    std::fs::read_dir(sim.state_dir().join(sub)).map_or(true, |mut d| d.next().is_none())
}

/// Nothing is left: no GPU instance on the device, no lease, no created/ record, no intent.
pub fn assert_nothing_left(sim: &Sim, what: &str) {
    assert!(gis(sim).is_empty(), "{what}: instances left {:?}", gis(sim));
    assert!(leases(&sim.status()).is_empty(), "{what}: leases left");
    assert!(dir_empty(sim, "created"), "{what}: created/ records left");
    assert!(dir_empty(sim, "intents"), "{what}: intents left");
}

/// Every compute-instance lease names a compute instance that exists (GPU, GI, CI id, MIG UUID), no
/// compute instance is leased twice, no GPU instance holds more than [`PER_GI`], and (with `all_leased`)
/// every compute instance on the device has a lease.
pub fn check_ci_invariants(sim: &Sim, all_leased: bool) {
    let m = machine(sim);
    let status = sim.status();
    let mut on_device = HashSet::new();
    for g in &m.gpus {
        for i in &g.instances {
            assert!(
                i.cis.len() <= PER_GI,
                "GPU {} GI {} over-filled: {} compute instances",
                g.index,
                i.id,
                i.cis.len()
            );
            for c in &i.cis {
                on_device.insert((g.uuid.clone(), i.id as u64, c.id as u64, c.uuid.clone()));
            }
        }
    }
    let mut leased = HashSet::new();
    for l in leases(&status) {
        let key = (
            l["gpu_uuid"].as_str().unwrap().to_string(),
            l["gi"].as_u64().unwrap(),
            l["ci"].as_u64().unwrap(),
            l["mig_uuid"].as_str().unwrap().to_string(),
        );
        assert!(
            on_device.contains(&key),
            "lease {} names a missing compute instance {key:?}",
            l["id"]
        );
        assert!(leased.insert(key.clone()), "{key:?} leased twice");
    }
    if all_leased {
        assert_eq!(leased, on_device, "every compute instance has a lease");
    }
}

fn alloc_1c(sim: &Sim) -> (String, u64) {
    sim.alloc(&["--profile", "1c.3g.40gb"])
}

/// Three `1c.3g.40gb` land in one `3g.40gb`, a fourth goes to the next; the GPU instance each lease
/// names (status) agrees with the device; a `3g.40gb` request never lands in a sharing one.
pub fn three_fill_one_fourth_goes_next(sim: &Sim) {
    let first: Vec<(String, u64)> = (0..PER_GI).map(|_| alloc_1c(sim)).collect();
    let uuids: HashSet<&String> = first.iter().map(|(u, _)| u).collect();
    assert_eq!(
        uuids.len(),
        PER_GI,
        "each compute instance has its own MIG UUID"
    );
    let one = gis(sim);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(
        one[0].2, PER_GI,
        "three compute instances in one GPU instance"
    );
    let fourth = alloc_1c(sim);
    let two = gis(sim);
    assert_eq!(
        two.len(),
        2,
        "the fourth went to a new GPU instance: {two:?}"
    );
    assert!(two.iter().any(|g| g.2 == 1 && g.1 != one[0].1), "{two:?}");
    let status = sim.status();
    let gi_of = |id: u64| {
        leases(&status)
            .into_iter()
            .find(|l| l["id"] == id)
            .map(|l| (l["gi"].as_u64().unwrap(), l["profile"].clone()))
            .unwrap()
    };
    for (_, id) in &first {
        assert_eq!(gi_of(*id).0, one[0].1 as u64);
        assert_eq!(gi_of(*id).1, "1c.3g.40gb");
    }
    check_ci_invariants(sim, true);
    // Whole GPU instances never go into a sharing one: both 3g.40gb placements are taken, so no room.
    let out = sim.run(&["alloc", "--profile", "3g.40gb"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared by lease"),
        "the no-room message names the sharing GPU instances: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, id) in &first {
        sim.ok(&["release", &id.to_string()]);
    }
    let left = gis(sim);
    assert_eq!(left.len(), 1, "the emptied GPU instance went: {left:?}");
    // The fourth's GPU instance is not full, so a whole request now gets the freed placement instead.
    let (whole, _) = sim.alloc(&["--profile", "3g.40gb"]);
    assert_ne!(whole, fourth.0);
    assert_eq!(gis(sim).len(), 2);
    check_ci_invariants(sim, true);
}

/// Three `1c.3g.40gb` in one GPU instance, released in every one of the 6 orders: nothing is left.
pub fn release_in_every_order(make: &dyn Fn() -> Sim) {
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let sim = make();
        let ids: Vec<u64> = (0..PER_GI).map(|_| alloc_1c(&sim).1).collect();
        assert_eq!(gis(&sim).len(), 1);
        for (n, i) in order.iter().enumerate() {
            sim.ok(&["release", &ids[*i].to_string()]);
            check_ci_invariants(&sim, true);
            let left = gis(&sim);
            if n + 1 < PER_GI {
                assert_eq!(
                    left.len(),
                    1,
                    "order {order:?}: the GPU instance stays while used"
                );
                assert_eq!(left[0].2, PER_GI - n - 1, "order {order:?}");
            }
        }
        assert_nothing_left(&sim, &format!("order {order:?}"));
    }
}

/// 16 `migrun alloc --profile 1c.3g.40gb` at once on an a100-80gb:2 (4 sharing GPU instances, 12 compute
/// instances): exactly 12 win, 4 get no room, no GPU instance is over-filled; all 12 released at once
/// leave nothing.
pub fn race_16(sim: &Sim) {
    const N: usize = 16;
    const ROOM: usize = 12;
    let children: Vec<_> = (0..N)
        .map(|_| {
            sim.cmd(&["alloc", "--profile", "1c.3g.40gb"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn migrun alloc")
        })
        .collect();
    let mut won = Vec::new();
    let mut no_room = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        if o.status.success() {
            won.push(parse_alloc_line(&String::from_utf8_lossy(&o.stdout)));
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(3), "no-room exit code: {err}");
            no_room += 1;
        }
    }
    assert_eq!((won.len(), no_room), (ROOM, N - ROOM));
    assert_eq!(
        won.iter().map(|(u, _)| u).collect::<HashSet<_>>().len(),
        ROOM,
        "no compute instance handed out twice"
    );
    check_ci_invariants(sim, true);
    assert!(gis(sim).iter().all(|g| g.2 == PER_GI), "{:?}", gis(sim));
    let releases: Vec<_> = won
        .iter()
        .map(|(_, id)| {
            sim.cmd(&["release", &id.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in releases {
        let o = r.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_nothing_left(sim, "after 12 parallel releases");
}

/// Killed at every step of a compute-instance allocation, into a new sharing GPU instance (`fresh`) or
/// into one that has room; `migrun gc` repairs. Killed right after the driver created the compute instance
/// but before its id was journaled (`ci-after-create-ci`), it cannot be told from one someone else made
/// there, so it is left alone and reported, as the GPU-instance allocation does (and so is a GPU instance
/// whose id was never journaled, `ci-after-create-gi`).
pub fn killed_during_ci_allocate(make: &dyn Fn() -> Sim, fresh: bool) {
    for step in migrun::alloc::testhook::CI_ALLOC_STEPS {
        if !fresh
            && matches!(
                *step,
                "ci-after-create-gi" | "ci-after-journal-gi" | "ci-after-record-gi"
            )
        {
            continue;
        }
        let sim = make();
        let before = (!fresh).then(|| alloc_1c(&sim));
        crash(&sim, step, &["alloc", "--profile", "1c.3g.40gb"]);
        let gc = sim.ok(&["gc"]);
        // The two steps whose leftover migrun cannot tell from someone else's: a GPU instance whose id,
        // or a compute instance whose id, was never journaled. Both stay, reported.
        let unbound_gi = *step == "ci-after-create-gi";
        let unbound = *step == "ci-after-create-ci" || unbound_gi;
        check_ci_invariants(&sim, !unbound);
        assert!(
            dir_empty(&sim, "intents"),
            "after {step}: intent left: {gc}"
        );
        let n = leases(&sim.status()).len();
        let finished = *step == "ci-after-write-lease";
        assert_eq!(
            n,
            usize::from(!fresh) + usize::from(finished),
            "after {step}: {gc}"
        );
        let cis: usize = gis(&sim).iter().map(|g| g.2).sum();
        assert_eq!(
            cis,
            n + usize::from(unbound && !unbound_gi),
            "after {step}: {gc}"
        );
        if unbound {
            assert!(
                gc.contains("migrun cannot tell, so it leaves it alone"),
                "{gc}"
            );
        }
        if unbound && !unbound_gi && fresh {
            // A sharing GPU instance with one compute instance nobody leases looks like a free whole
            // instance; a whole request must still never get it.
            let orphan: Vec<String> = machine(&sim)
                .gpus
                .iter()
                .flat_map(|g| {
                    g.instances
                        .iter()
                        .flat_map(|i| i.cis.iter().map(|c| c.uuid.clone()))
                })
                .collect();
            let (whole, _) = sim.alloc(&["--profile", "3g.40gb"]);
            assert!(
                !orphan.contains(&whole),
                "after {step} a whole request got the orphan"
            );
        }
        if let Some((uuid, _)) = &before {
            assert!(
                leases(&sim.status())
                    .iter()
                    .any(|l| l["mig_uuid"] == uuid.as_str()),
                "after {step} the other lease is untouched"
            );
        }
        if unbound {
            continue;
        }
        // Everything else releases to nothing.
        for l in leases(&sim.status()) {
            sim.ok(&["release", &l["id"].to_string()]);
        }
        assert_nothing_left(&sim, &format!("after {step}: {gc}"));
    }
}

/// Killed at every step of releasing the last compute instance of a sharing GPU instance (and, for the
/// compute-instance steps, one of two): gc finishes, the other lease is untouched.
pub fn killed_during_ci_release(make: &dyn Fn() -> Sim) {
    use migrun::alloc::testhook::{CI_RELEASE_STEPS, RELEASE_STEPS};
    for step in RELEASE_STEPS.iter().chain(CI_RELEASE_STEPS) {
        for others in [0, 1] {
            let sim = make();
            let other = (others == 1).then(|| alloc_1c(&sim));
            let (_, id) = alloc_1c(&sim);
            let out = if others == 0 {
                // The last compute instance: every step is passed (the GPU instance goes too), so it must die there.
                crash(&sim, step, &["release", &id.to_string()]);
                None
            } else {
                let out = sim
                    .cmd(&["release", &id.to_string()])
                    .env("MIGRUN_TEST_CRASH_AT", step)
                    .output()
                    .unwrap();
                Some(out)
            };
            let gc = sim.ok(&["gc"]);
            check_ci_invariants(&sim, true);
            assert!(
                leases(&sim.status()).iter().all(|l| l["id"] != id),
                "after {step} ({others} other): the lease is gone: {gc} {out:?}"
            );
            match &other {
                Some((uuid, oid)) => {
                    assert_eq!(gis(&sim).len(), 1, "after {step}: {gc}");
                    assert_eq!(gis(&sim)[0].2, 1, "after {step}: {gc}");
                    assert!(leases(&sim.status())
                        .iter()
                        .any(|l| l["mig_uuid"] == uuid.as_str()));
                    sim.ok(&["release", &oid.to_string()]);
                    assert_nothing_left(&sim, step);
                }
                None => assert_nothing_left(&sim, &format!("after {step}: {gc}")),
            }
        }
    }
}

/// Compute-instance creates run outside the allocation lock (issue 23): `N` `1c.3g.40gb` requests at once on an
/// a100-80gb:1 (two sharing GPU instances of three) while the simulated driver takes `CREATE_CI_MS` per compute
/// instance. Made one after another they would take N creates; they overlap, so the burst takes well under that
/// (asserted loosely: half of it; this is a behaviour check, not a benchmark). No slot is handed out twice.
pub fn parallel_creates_overlap(sim: &Sim) {
    const N: usize = 6;
    const CREATE_CI_MS: u64 = 2000;
    sim.update(|m| {
        m.latency = format!("create-ci={CREATE_CI_MS}")
            .parse()
            .expect("a latency setting")
    });
    let t0 = Instant::now();
    let children: Vec<_> = (0..N)
        .map(|_| {
            sim.cmd(&["alloc", "--profile", "1c.3g.40gb"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn migrun alloc")
        })
        .collect();
    let mut uuids = HashSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        uuids.insert(parse_alloc_line(&String::from_utf8_lossy(&o.stdout)).0);
    }
    let took = t0.elapsed();
    assert_eq!(uuids.len(), N, "no compute instance handed out twice");
    sim.update(|m| m.latency = "off".parse().expect("a latency setting"));
    check_ci_invariants(sim, true);
    assert!(gis(sim).iter().all(|g| g.2 == PER_GI), "{:?}", gis(sim));
    let serial = Duration::from_millis(N as u64 * CREATE_CI_MS);
    assert!(
        took < serial / 2,
        "{N} compute-instance creates of {CREATE_CI_MS} ms took {took:?}: they did not overlap (one after another: {serial:?})"
    );
    eprintln!("{N} compute-instance allocations at once, {CREATE_CI_MS} ms each: {took:?}");
}

/// A failed compute-instance create releases its reservation (issue 23: creates run outside the lock): into a new
/// sharing GPU instance, that GPU instance is destroyed again and nothing is left; into one another lease uses, only
/// the reservation goes and the other lease is untouched. `fail` is the backend's fault setting (variable, value)
/// that makes the compute-instance create fail.
pub fn failed_create_releases_its_reservation(sim: &Sim, fail: (&str, &str)) {
    let failing = |sim: &Sim| {
        let out = sim
            .cmd(&["alloc", "--profile", "1c.3g.40gb"])
            .env(fail.0, fail.1)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    failing(sim);
    assert_nothing_left(sim, "after a failed create into a new GPU instance");
    let (uuid, id) = alloc_1c(sim);
    failing(sim);
    check_ci_invariants(sim, true);
    assert_eq!(
        gis(sim),
        [(0, gis(sim)[0].1, 1)],
        "the other lease's GPU instance stays"
    );
    assert!(leases(&sim.status())
        .iter()
        .any(|l| l["mig_uuid"] == uuid.as_str()));
    assert!(dir_empty(sim, "intents"), "the reservation is gone");
    sim.ok(&["release", &id.to_string()]);
    assert_nothing_left(sim, "after releasing the other lease");
}

/// A compute-instance release runs outside the allocation lock (issue 23): while one lease's compute instance is
/// destroyed under a slow driver (4 s per compute-instance destroy), a request for a compute instance is served into
/// the same sharing GPU instance before the release ends (its GPU instance stays: it is not empty), never into the
/// slot being freed twice. Ordering, not timing, is asserted.
pub fn release_runs_outside_the_lock(sim: &Sim) {
    let (_, keep) = alloc_1c(sim);
    let (_, gone) = alloc_1c(sim);
    sim.update(|m| m.latency = "destroy-ci=4000".parse().unwrap());
    let mut release = sim
        .cmd(&["release", &gone.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrun release");
    let t0 = Instant::now();
    while dir_empty(sim, "intents") {
        assert!(t0.elapsed() < Duration::from_secs(30), "no claim appeared");
        assert!(
            release.try_wait().unwrap().is_none(),
            "the release ended early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, third) = alloc_1c(sim);
    assert!(
        release.try_wait().unwrap().is_none(),
        "an allocation was served only after the release's destroy ended: the destroy held the lock"
    );
    let out = release.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.update(|m| m.latency = "off".parse().unwrap());
    check_ci_invariants(sim, true);
    let ids: HashSet<u64> = leases(&sim.status())
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from([keep, third]));
    assert_eq!(
        gis(sim).len(),
        1,
        "one sharing GPU instance: {:?}",
        gis(sim)
    );
    for id in [keep, third] {
        sim.ok(&["release", &id.to_string()]);
    }
    assert_nothing_left(sim, "after releasing both");
}
