//! Concurrency: 64 `migrun alloc --profile 1g.10gb` processes at once on a simulated h100-80gb:8 (56 slots).

mod alloc_support;

use alloc_support::{check_invariants, instances, leases, parse_alloc_line, Sim};
use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[test]
fn sixty_four_at_once_exactly_fifty_six_win() {
    let sim = Sim::new("h100-80gb:8");
    let started = Instant::now();
    let outs: Vec<_> = spawn_all(&sim, &[])
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

#[test]
fn with_wait_all_sixty_four_are_served() {
    let sim = Arc::new(Sim::new("h100-80gb:8"));
    let started = Instant::now();
    let children = spawn_all(&sim, &["--wait=60"]);
    // The test is every holder: it keeps each instance briefly, then releases it. `held` is what is
    // handed out right now; a UUID granted while it is still held would be a double allocation.
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
