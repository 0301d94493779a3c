//! The failure paths of tests/slurm_cluster.rs: a cancelled step, a killed task, a killed slurmstepd, no room, and
//! fragmentation with `--mig-wait`; each ends with every node's `migrun status --json` checked. It must not start a
//! cluster of its own.

use super::*;

/// A step on node2 holding a 1g.10gb slice while it runs `sleep SECS` (each scenario its own SECS, so its task
/// can be found by its command line): srun, the step's lease once migrun granted it, and the step's job id.
fn submit_sleep(c: &Cluster, secs: u32) -> (Child, Value, u64) {
    let child = spawn(
        c,
        &[
            "srun",
            "-w",
            NODE2,
            "--mig=1g.10gb",
            "sleep",
            &secs.to_string(),
        ],
    );
    let l = wait_lease(c, NODE2, |_| true);
    let job = l["holder"]["job"].as_u64().unwrap();
    (child, l, job)
}

/// The `sleep SECS` task of [`submit_sleep`] runs (pgrep finds it), waiting up to 30 s.
fn task_runs(c: &Cluster, secs: u32) -> bool {
    let pattern = format!("^(/usr/bin/)?sleep {secs}$");
    c.eventually(Duration::from_secs(30), || {
        std::process::Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Kill the `sleep SECS` task of [`submit_sleep`] with SIGKILL; whether one was there.
fn kill_task(secs: u32) -> bool {
    std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("^(/usr/bin/)?sleep {secs}$")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Job `job`'s slice on node2 is released within 30 s (`what` says which step it was).
fn assert_released(c: &Cluster, job: u64, what: &str) {
    assert!(
        c.eventually(Duration::from_secs(30), || held_by(c, NODE2, job)
            .is_empty()),
        "{what}'s slice is released\n{}",
        c.logs()
    );
}

/// `migrun alloc ARGS` on `node` once per entry of `each` (manual leases that take room); their lease ids.
fn manual_leases(c: &Cluster, node: &str, each: &[&[&str]]) -> Vec<String> {
    each.iter()
        .map(|args| {
            let o = c.migrun(node).arg("alloc").args(*args).output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            // `MIG-… lease N`
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `migrun release ID` on `node` for each of `ids`, insisting on success.
fn release_all(c: &Cluster, node: &str, ids: &[String]) {
    for id in ids {
        let o = c.migrun(node).args(["release", id]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// scancel of a running step, a killed task, a killed slurmstepd: the slice goes back (the last through gc, once
/// Slurm no longer lists the step).
pub(crate) fn cancelled_and_killed_steps(c: &Cluster, keep: &[u64]) {
    // scancel
    let (child, _, job) = submit_sleep(c, 300);
    let out = c.run(&["scancel", &job.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = finish(child);
    assert_released(c, job, "a cancelled step");

    // the task killed
    let (child, _, job) = submit_sleep(c, 301);
    // The lease exists before the task is exec'd: kill it once it runs.
    let killed = c.eventually(Duration::from_secs(30), || kill_task(301));
    assert!(killed, "the task ran\n{}", c.logs());
    let out = finish(child);
    assert!(
        !out.status.success(),
        "srun reports the killed task: {}",
        text(&out)
    );
    assert_released(c, job, "a killed task");

    // slurmstepd killed: the plugin never runs its exit; gc keeps the lease while Slurm lists the step (its task
    // may still run on the slice), and releases it once the step is gone.
    let (child, l, job) = submit_sleep(c, 302);
    let stepd = l["holder"]["pid"].as_u64().unwrap();
    // Kill it only once the task runs: before that, migrun alloc may still be writing its answer, and a migrun whose
    // caller died before learning the lease rolls it back itself (`alloc` exit 1, nothing left to find).
    assert!(task_runs(c, 302), "the task ran\n{}", c.logs());
    let comm = std::fs::read_to_string(format!("/proc/{stepd}/comm")).unwrap_or_default();
    assert!(
        comm.starts_with("slurmstepd"),
        "the recorded holder is the step daemon: {comm:?}"
    );
    let out = std::process::Command::new("kill")
        .args(["-KILL", &stepd.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(500));
    let gc = c.migrun(NODE2).arg("gc").output().unwrap();
    assert!(gc.status.success(), "{}", text(&gc));
    assert_eq!(
        held_by(c, NODE2, job).len(),
        1,
        "gc keeps the slice while Slurm lists the step\n{}",
        text(&gc)
    );
    let out = c.run(&["scancel", &job.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut child = child;
    assert!(c.eventually(Duration::from_secs(30), || {
        let o = c.run(&["squeue", "-h", &format!("--steps={job}.0")]);
        String::from_utf8_lossy(&o.stdout).trim().is_empty()
    }));
    let gc = c.migrun(NODE2).arg("gc").output().unwrap();
    assert!(gc.status.success(), "{}", text(&gc));
    assert!(
        String::from_utf8_lossy(&gc.stdout).contains(&format!("slurm job {job}.0 is gone")),
        "gc names the step it released: {}",
        text(&gc)
    );
    let _ = child.kill();
    let _ = child.wait();
    kill_task(302);
    assert_no_leases_but(
        c,
        keep,
        "after scancel, a killed task and a killed slurmstepd",
    );
}

/// `--mig=7g.80gb` while both GPUs of node1 hold a small slice: the step fails with migrun's one-line reason on the
/// user's terminal, srun exits non-zero, and node1 goes back to idle, not drained.
pub(crate) fn no_room_fails_the_step_not_the_node(c: &Cluster, keep: &[u64]) {
    let manual = manual_leases(
        c,
        NODE1,
        &[
            &["--profile", "1g.10gb", "--gpu", "0"],
            &["--profile", "1g.10gb", "--gpu", "1"],
        ],
    );
    let out = c.run(&["srun", "-w", NODE1, "--mig=7g.80gb", "true"]);
    assert!(
        !out.status.success(),
        "no room fails the step: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let reason: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("migrun: no room for 7g.80gb"))
        .collect();
    assert_eq!(reason.len(), 1, "one line says why: {err}");
    assert!(
        reason[0].starts_with("slurmstepd-node1: error: migrun: no room for 7g.80gb on "),
        "{err}"
    );
    // Other steps may still run there (the time-limit step): in service means not drained, down or failing.
    let state = c.node_state(NODE1).to_uppercase();
    assert!(
        !["DRAIN", "DOWN", "FAIL", "NOT_RESPONDING"]
            .iter()
            .any(|s| state.contains(s)),
        "node1 stays in service: {state}\n{}",
        c.logs()
    );
    release_all(c, NODE1, &manual);
    assert_no_leases_but(c, keep, "after the refused step");
}

/// A step the scheduler admitted but that cannot be placed (node2's GPU full for 1g.10gb) waits up to --mig-wait
/// and starts when room appears; without room it fails cleanly when the wait is over.
pub(crate) fn fragmentation_waits_then_fails(c: &Cluster, keep: &[u64]) {
    let mut manual = manual_leases(c, NODE2, &[&["--profile", "1g.10gb"] as &[&str]; 4]);
    let t = Instant::now();
    let out = c.run(&["srun", "-w", NODE2, "--mig=1g.10gb", "--mig-wait=2", "true"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(t.elapsed() >= Duration::from_secs(2), "it waited first");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("migrun: "),
        "{}",
        text(&out)
    );

    let child = spawn(
        c,
        &[
            "srun",
            "-w",
            NODE2,
            "--mig=1g.10gb",
            "--mig-wait=60",
            "printenv",
            "MIGRUN_PROFILE",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    release_all(c, NODE2, &[manual.pop().unwrap()]);
    let out = finish(child);
    assert!(
        out.status.success(),
        "the waiting step starts once room appears: {}",
        text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1g.10gb");
    release_all(c, NODE2, &manual);
    assert_no_leases_but(c, keep, "after the waits");
}
