//! Compute-instance slices (issue 22) on the simulator: three `1c.3g.40gb` share one `3g.40gb`, a fourth
//! goes to the next, every release order leaves nothing, 16 racing allocations never over-fill a GPU
//! instance, and a migrun killed at any step of a compute-instance allocation or release leaves nothing
//! gc cannot repair. The same scenarios run through the fake NVML in tests/nvml_ci.rs.

mod alloc_support;

use alloc_support::{ci_scenarios, Sim};

fn a100() -> Sim {
    Sim::new("a100-80gb")
}

#[test]
fn three_share_one_gpu_instance_and_a_fourth_goes_to_the_next() {
    ci_scenarios::three_fill_one_fourth_goes_next(&a100());
}

#[test]
fn releasing_in_every_order_leaves_nothing() {
    ci_scenarios::release_in_every_order(&a100);
}

#[test]
fn sixteen_at_once_never_over_fill_a_gpu_instance() {
    ci_scenarios::race_16(&Sim::new("a100-80gb:2"));
}

#[test]
fn killed_during_a_compute_instance_allocation_then_gc_repairs() {
    ci_scenarios::killed_during_ci_allocate(&a100, true);
    ci_scenarios::killed_during_ci_allocate(&a100, false);
}

#[test]
fn killed_during_a_compute_instance_release_then_gc_finishes_it() {
    ci_scenarios::killed_during_ci_release(&a100);
}

fn err_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn leases_of_another_user_get_their_own_gpu_instance_unless_the_config_says_so() {
    let sim = a100();
    let as_uid = |uid: &str| sim.alloc(&["--profile", "1c.3g.40gb", "--for-uid", uid]);
    as_uid("1000");
    as_uid("1000");
    as_uid("1001");
    let gis = ci_scenarios::gis(&sim);
    assert_eq!(
        gis.len(),
        2,
        "uid 1001 does not share uid 1000's memory: {gis:?}"
    );
    assert_eq!(gis.iter().map(|g| g.2).collect::<Vec<_>>(), [2, 1]);
    // Both GPU instances are taken by their users; uid 1002 finds no room (and is told why).
    let o = sim.run(&["alloc", "--profile", "1c.3g.40gb", "--for-uid", "1002"]);
    assert_eq!(o.status.code(), Some(3), "{}", err_of(&o));
    assert!(
        err_of(&o).contains("share_gi_across_users is off"),
        "{}",
        err_of(&o)
    );

    std::fs::write(sim.config_path(), "share_gi_across_users = true\n").unwrap();
    as_uid("1002");
    let gis = ci_scenarios::gis(&sim);
    assert_eq!(gis.len(), 2, "{gis:?}");
    assert_eq!(gis.iter().map(|g| g.2).sum::<usize>(), 4);
    ci_scenarios::check_ci_invariants(&sim, true);
}

#[test]
fn allowed_profiles_and_lease_limits_apply_to_compute_instance_profiles() {
    let sim = a100();
    let cfg = |text: &str| std::fs::write(sim.config_path(), text).unwrap();
    // Naming the compute-instance profile allows it, not its whole GPU instance.
    cfg("allowed_profiles = [\"1c.3g.40gb\"]\n");
    let (_, id) = sim.alloc(&["--profile", "1c.3g.40gb"]);
    let o = sim.run(&["alloc", "--profile", "3g.40gb"]);
    assert_eq!(o.status.code(), Some(2), "{}", err_of(&o));
    assert!(err_of(&o).contains("refused by policy"), "{}", err_of(&o));
    sim.ok(&["release", &id.to_string()]);
    // Naming the GPU-instance profile allows its compute instances too.
    cfg("allowed_profiles = [\"3g.40gb\"]\n");
    let (_, id) = sim.alloc(&["--profile", "MIG 1c.3g.40gb"]);
    sim.ok(&["release", &id.to_string()]);
    // Neither named: refused by policy, on one line, nothing created.
    cfg("allowed_profiles = [\"1g.10gb\", \"2c.3g.40gb\"]\n");
    let o = sim.run(&["alloc", "--profile", "1c.3g.40gb"]);
    assert_eq!(o.status.code(), Some(2), "{}", err_of(&o));
    assert_eq!(
        err_of(&o).trim(),
        "migrun: refused by policy: 1c.3g.40gb (nor its GPU-instance profile 3g.40gb) is not in the config's allowed_profiles; ask for an allowed profile (docs/config.md)"
    );
    assert!(ci_scenarios::gis(&sim).is_empty());
    // Per-user limits count compute-instance leases like any other.
    cfg("max_leases_per_user = 2\n");
    sim.alloc(&["--profile", "1c.3g.40gb", "--for-uid", "1000"]);
    sim.alloc(&["--profile", "1c.3g.40gb", "--for-uid", "1000"]);
    let o = sim.run(&["alloc", "--profile", "1c.3g.40gb", "--for-uid", "1000"]);
    assert_eq!(o.status.code(), Some(2), "{}", err_of(&o));
    assert!(
        err_of(&o).contains("max_leases_per_user = 2"),
        "{}",
        err_of(&o)
    );
    ci_scenarios::check_ci_invariants(&sim, true);
}

#[test]
fn unknown_compute_instance_profiles_are_refused_by_name() {
    let sim = a100();
    let refused = |profile: &str, want: &str| {
        let o = sim.run(&["alloc", "--profile", profile]);
        assert_eq!(o.status.code(), Some(2), "{profile}: {}", err_of(&o));
        let e = err_of(&o);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains(want), "{profile}: {e}");
    };
    // A GPU-instance profile whose compute instances the tables do not know.
    refused("1c.7g.80gb", "are not in migrun's tables yet");
    // A compute-instance profile the GPU-instance profile has not.
    refused("1c.2g.20gb", "not in migrun's tables yet");
    // More compute slices than the GPU instance has.
    refused("4c.3g.40gb", "takes 1 to 3 of 3g.40gb's 3 compute slices");
    // A GPU-instance profile this model has not.
    refused("1c.3g.20gb", "does not exist on GPU 0");
    assert!(ci_scenarios::gis(&sim).is_empty());
    assert!(!sim
        .state_dir()
        .join("leases")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
}

#[test]
fn the_launcher_dry_run_plans_a_compute_instance_into_the_sharing_gpu_instance() {
    let sim = a100();
    let dry = || {
        sim.ok(&[
            "--profile",
            "1c.3g.40gb",
            "--inject",
            "env",
            "--docker",
            "/bin/true",
            "--dry-run",
            "busybox",
            "true",
        ])
    };
    assert!(
        dry().contains("create a sharing 3g.40gb GPU instance on GPU 0"),
        "{}",
        dry()
    );
    sim.alloc(&["--profile", "1c.3g.40gb"]);
    let plan = dry();
    assert!(
        plan.contains("create a 1c.3g.40gb compute instance in migrun's sharing GPU instance GI"),
        "{plan}"
    );
    assert!(plan.contains("--label migrun.profile=1c.3g.40gb"), "{plan}");
    assert_eq!(
        ci_scenarios::gis(&sim).len(),
        1,
        "a dry run creates nothing"
    );
}

#[test]
fn an_idle_kept_instance_makes_room_for_a_new_sharing_gpu_instance() {
    let sim = a100();
    std::fs::write(sim.config_path(), "release = \"keep\"\n").unwrap();
    // Two whole 3g.40gb, released and kept warm: no room left for a sharing GPU instance.
    let a = sim.alloc(&["--profile", "3g.40gb"]);
    let b = sim.alloc(&["--profile", "3g.40gb"]);
    sim.ok(&["release", &a.1.to_string()]);
    sim.ok(&["release", &b.1.to_string()]);
    assert_eq!(ci_scenarios::gis(&sim).len(), 2);
    // A 1c.3g.40gb evicts one kept instance (never reuses it whole) and makes a sharing one there.
    let (uuid, _) = sim.alloc(&["--profile", "1c.3g.40gb"]);
    assert!(uuid != a.0 && uuid != b.0);
    let gis = ci_scenarios::gis(&sim);
    assert_eq!(gis.len(), 2, "{gis:?}");
    ci_scenarios::check_ci_invariants(&sim, false);
}

#[test]
fn a_waiting_compute_instance_request_gets_the_one_released() {
    let sim = a100();
    let held: Vec<(String, u64)> = (0..2 * ci_scenarios::PER_GI)
        .map(|_| sim.alloc(&["--profile", "1c.3g.40gb"]))
        .collect();
    let full = sim.run(&["alloc", "--profile", "1c.3g.40gb"]);
    assert_eq!(full.status.code(), Some(3), "{}", err_of(&full));
    let waiter = sim
        .cmd(&["alloc", "--profile", "1c.3g.40gb", "--wait=30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    sim.ok(&["release", &held[1].1.to_string()]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", err_of(&out));
    let (uuid, _) = alloc_support::parse_alloc_line(&String::from_utf8_lossy(&out.stdout));
    assert!(
        held.iter().all(|(u, _)| *u != uuid),
        "a new compute instance"
    );
    assert_eq!(
        ci_scenarios::gis(&sim)
            .iter()
            .map(|g| g.2)
            .collect::<Vec<_>>(),
        [3, 3]
    );
    ci_scenarios::check_ci_invariants(&sim, true);
}

#[test]
fn a_busy_compute_instance_drains_and_its_neighbours_are_untouched() {
    let sim = a100();
    let (_, busy) = sim.alloc(&["--profile", "1c.3g.40gb"]);
    let (_, other) = sim.alloc(&["--profile", "1c.3g.40gb"]);
    let lease = |id: u64| {
        alloc_support::leases(&sim.status())
            .into_iter()
            .find(|l| l["id"] == id)
    };
    let at = |id: u64| {
        let l = lease(id).unwrap();
        (
            l["gi"].as_u64().unwrap() as u32,
            l["ci"].as_u64().unwrap() as u32,
        )
    };
    let (gi, ci) = at(busy);
    sim.update(|m| m.set_ci_processes(0, gi, ci, 1)).unwrap();
    let out = sim.run(&["release", &busy.to_string()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), err_of(&out));
    assert!(
        text.contains("draining") || text.contains("in use"),
        "{text}"
    );
    assert_eq!(lease(busy).unwrap()["state"], "draining");
    assert_eq!(
        ci_scenarios::gis(&sim),
        [(0, gi, 2)],
        "nothing destroyed while in use"
    );
    // The other lease releases normally; the GPU instance stays for the busy one.
    sim.ok(&["release", &other.to_string()]);
    assert_eq!(ci_scenarios::gis(&sim), [(0, gi, 1)]);
    // Once idle, gc finishes: the compute instance, then the empty GPU instance.
    sim.update(|m| m.set_ci_processes(0, gi, ci, 0)).unwrap();
    sim.ok(&["gc"]);
    ci_scenarios::assert_nothing_left(&sim, "after gc");
}

/// `keep_idle_s` (issue 23) with compute-instance slices: a kept sharing GPU instance goes once it is empty and
/// idle that long, never while a lease's compute instance, or one made outside migrun, is in it.
#[test]
fn keep_idle_s_expires_a_kept_sharing_gpu_instance_only_once_it_is_empty() {
    let sim = a100();
    std::fs::write(sim.config_path(), "release = \"keep\"\nkeep_idle_s = 0\n").unwrap();
    let a = sim.alloc(&["--profile", "1c.3g.40gb"]);
    let b = sim.alloc(&["--profile", "1c.3g.40gb"]);
    sim.ok(&["release", &a.1.to_string()]);
    sim.ok(&["gc"]);
    let gis = ci_scenarios::gis(&sim);
    assert_eq!(gis.len(), 1, "b's compute instance keeps it: {gis:?}");
    assert_eq!(gis[0].2, 1, "{gis:?}");
    sim.ok(&["release", &b.1.to_string()]);
    // Kept, empty; then someone outside migrun makes a compute instance in it: not migrun's to destroy.
    let (gpu, gi, n) = ci_scenarios::gis(&sim)[0];
    assert_eq!(n, 0);
    let foreign = sim.update(|m| {
        let p = m.ci_profiles(gpu, gi).unwrap()[0].id;
        m.create_ci_anywhere(gpu, gi, p).unwrap()
    });
    sim.ok(&["gc"]);
    let gis = ci_scenarios::gis(&sim);
    assert_eq!(gis, [(gpu, gi, 1)], "a foreign compute instance keeps it");
    sim.update(|m| m.destroy_ci(gpu, gi, foreign.id)).unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains("keep_idle_s"), "{gc}");
    ci_scenarios::assert_nothing_left(&sim, "expired");
}

/// A compute-instance lease left draining while busy is not a container's end waiting for a background worker
/// (issue 23's 30 s grace): once idle, the next allocation's sweep finishes it.
#[test]
fn the_next_allocation_finishes_a_drained_compute_instance_at_once() {
    let sim = a100();
    let (_, busy) = sim.alloc(&["--profile", "1c.3g.40gb"]);
    let l = alloc_support::leases(&sim.status())
        .into_iter()
        .find(|l| l["id"] == busy)
        .unwrap();
    let (gi, ci) = (
        l["gi"].as_u64().unwrap() as u32,
        l["ci"].as_u64().unwrap() as u32,
    );
    sim.update(|m| m.set_ci_processes(0, gi, ci, 1)).unwrap();
    let _ = sim.run(&["release", &busy.to_string()]);
    sim.update(|m| m.set_ci_processes(0, gi, ci, 0)).unwrap();
    let (_, whole) = sim.alloc(&["--profile", "1g.10gb"]);
    let left = alloc_support::leases(&sim.status());
    assert!(left.iter().all(|l| l["id"] != busy), "{left:?}");
    sim.ok(&["release", &whole.to_string()]);
    ci_scenarios::assert_nothing_left(&sim, "after the sweep");
}

/// Compute-instance creates overlap (issue 23): six `1c.3g.40gb` at once under a 2 s create-ci take well under 12 s.
#[test]
fn parallel_compute_instance_creates_overlap_outside_the_lock() {
    ci_scenarios::parallel_creates_overlap(&Sim::new("a100-80gb"));
}

/// A failed compute-instance create (outside the lock) releases its reservation and leaves nothing of its own.
#[test]
fn a_failed_compute_instance_create_releases_its_reservation() {
    ci_scenarios::failed_create_releases_its_reservation(
        &a100(),
        ("MIGRUN_TEST_FAIL", "create-ci=INSUFFICIENT_RESOURCES"),
    );
}

/// A compute-instance release destroys outside the lock: another compute-instance request is served meanwhile.
#[test]
fn a_compute_instance_release_runs_outside_the_lock() {
    ci_scenarios::release_runs_outside_the_lock(&a100());
}
