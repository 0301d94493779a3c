//! The SPANK plugin on a real Slurm 22.05 cluster: one controller and two compute nodes (each its own slurmd in its
//! own network namespace, with its own simulated GPUs and migrun state dir), every scenario of docs/slurm.md run in
//! turn against one cluster, each checked against `migrun status --json` of every node afterwards.
//!
//! One #[test] on purpose: starting the cluster is the expensive part, and the scenarios must not share GPUs by
//! accident. Needs root, Debian's slurmd/slurmctld/slurm-client/munge and libslurm-dev (scripts/setup-test-host.sh).

#[path = "slurm_cluster/failures.rs"]
mod failures;
mod slurm_support;

use serde_json::Value;
use slurm_support::{env_var, text, Cluster, Node};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIGRUN: &str = env!("CARGO_BIN_EXE_migrun");

const NODE1: &str = "node1"; // two H100-80GB: 14 compute slices
const NODE2: &str = "node2"; // one A100-40GB: 7 compute slices

fn cluster() -> Cluster {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plugin = slurm_support::build_plugin(repo);
    Cluster::start(
        repo,
        &plugin,
        Path::new(MIGRUN),
        &std::env::temp_dir(),
        vec![
            Node {
                name: NODE1,
                simulate: "h100-80gb:2",
                gres: 14,
            },
            Node {
                name: NODE2,
                simulate: "a100-40gb:1",
                gres: 7,
            },
        ],
    )
}

/// The leases of `node` held by Slurm job `job` (any step).
fn held_by(c: &Cluster, node: &str, job: u64) -> Vec<Value> {
    c.leases(node)
        .into_iter()
        .filter(|l| l["holder"]["kind"] == "slurm" && l["holder"]["job"] == job)
        .collect()
}

/// Leases on `node` other than those of `except` jobs (the time-limit job runs alongside the other scenarios).
fn others(c: &Cluster, node: &str, except: &[u64]) -> Vec<Value> {
    c.leases(node)
        .into_iter()
        .filter(|l| {
            !(l["holder"]["kind"] == "slurm" && except.iter().any(|j| l["holder"]["job"] == *j))
        })
        .collect()
}

fn assert_no_leases_but(c: &Cluster, except: &[u64], when: &str) {
    for n in [NODE1, NODE2] {
        let left = others(c, n, except);
        assert!(
            left.is_empty(),
            "{when}: {n} still holds {left:#?}\n{}",
            c.logs()
        );
        // And no instance beyond those the excepted steps hold.
        let kept = c.leases(n).len();
        assert_eq!(
            c.instances(n),
            kept,
            "{when}: {n} has instances nobody holds: {:#}",
            c.status(n)
        );
    }
}

/// Start `srun ARGS` in the background.
fn spawn(c: &Cluster, args: &[&str]) -> Child {
    c.slurm(Duration::from_secs(300), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for the one Slurm lease on `node` that `pred` picks, and return it.
fn wait_lease(c: &Cluster, node: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(l) = c
            .leases(node)
            .into_iter()
            .find(|l| l["holder"]["kind"] == "slurm" && pred(l))
        {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no Slurm lease appeared on {node}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

#[test]
fn slurm_steps_get_their_own_mig_slices() {
    let c = cluster();

    // The time limit is counted in minutes, so this step starts first and is checked last.
    let limit_job = spawn(
        &c,
        &[
            "srun",
            "-w",
            NODE1,
            "-t",
            "1",
            "--mig=1g.10gb",
            "sleep",
            "600",
        ],
    );
    let tl = wait_lease(&c, NODE1, |l| l["holder"]["step"] == 0);
    let tl_job = tl["holder"]["job"].as_u64().unwrap();
    let keep = [tl_job];

    env_and_status_on_each_node(&c, &keep);
    array_across_nodes(&c, &keep);
    steps_in_a_batch_job_share_its_slice(&c, &keep);
    failures::cancelled_and_killed_steps(&c, &keep);
    failures::no_room_fails_the_step_not_the_node(&c, &keep);
    failures::fragmentation_waits_then_fails(&c, &keep);
    min_mem_picks_per_model(&c, &keep);
    charged_to_the_jobs_user(&c, &keep);
    no_mig_costs_nothing(&c);

    // The time-limit step: Slurm ends it a little after a minute; the slice goes with it.
    let out = finish(limit_job);
    assert!(
        !out.status.success(),
        "a step past its time limit: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TIME LIMIT"),
        "Slurm says why the step ended: {}",
        text(&out)
    );
    assert!(
        c.eventually(Duration::from_secs(30), || held_by(&c, NODE1, tl_job)
            .is_empty()),
        "the time-limit step's slice is released\n{}",
        c.logs()
    );
    c.assert_empty("after every scenario");
    for n in [NODE1, NODE2] {
        assert!(
            c.eventually(Duration::from_secs(30), || c.node_state(n) == "idle"),
            "{n} ends idle, never drained: {}",
            c.node_state(n)
        );
    }
}

/// `srun --mig=1g.10gb env` on each node: the task sees a MIG UUID that node's migrun leased to this very step,
/// charged to the job's user; after the step, no lease and no instance on any node.
fn env_and_status_on_each_node(c: &Cluster, keep: &[u64]) {
    for node in [NODE1, NODE2] {
        let sd = c.state_dir(node);
        let sim = c.nodes.iter().find(|n| n.name == node).unwrap().simulate;
        let script = format!(
            "env; echo ---; MIGRUN_STATE_DIR={} MIGRUN_SIMULATE={sim} {} status --json",
            sd.display(),
            MIGRUN
        );
        let out = c.run(&["srun", "-w", node, "--mig=1g.10gb", "bash", "-c", &script]);
        assert!(
            out.status.success(),
            "srun --mig on {node}: {}\n{}",
            text(&out),
            c.logs()
        );
        let s = String::from_utf8_lossy(&out.stdout);
        let (env, status) = s.split_once("---\n").expect("env, then status");
        let uuid = env_var(env, "CUDA_VISIBLE_DEVICES").expect("CUDA_VISIBLE_DEVICES is set");
        assert!(uuid.starts_with("MIG-"), "{uuid}");
        assert_eq!(
            env_var(env, "NVIDIA_VISIBLE_DEVICES").as_deref(),
            Some(uuid.as_str())
        );
        assert_eq!(env_var(env, "MIGRUN_PROFILE").as_deref(), Some("1g.10gb"));
        let lease: u64 = env_var(env, "MIGRUN_LEASE").unwrap().parse().unwrap();
        let job: u64 = env_var(env, "SLURM_JOB_ID").unwrap().parse().unwrap();
        let st: Value = serde_json::from_str(status).unwrap();
        let l = st["leases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == lease)
            .unwrap_or_else(|| {
                panic!("lease {lease} is not in {node}'s status during the step: {st:#}")
            });
        assert_eq!(l["mig_uuid"], uuid.as_str(), "{l:#}");
        assert_eq!(l["holder"]["kind"], "slurm");
        assert_eq!(l["holder"]["job"], job);
        assert_eq!(l["holder"]["step"], 0);
        assert_eq!(l["uid"], 0);
        assert_eq!(l["profile"], "1g.10gb");
        assert!(
            held_by(c, node, job).is_empty(),
            "released at step end on {node}"
        );
    }
    assert_no_leases_but(c, keep, "after srun --mig env on each node");
}

/// `sbatch --array=1-16 --mig=1g.10gb --gres=mig:1`: the count GRES keeps each node within its compute slices, each
/// job sees its own slice (its lease, its job), no slice is leased twice at once, and all are released.
fn array_across_nodes(c: &Cluster, keep: &[u64]) {
    let dir = c.dir();
    let job = dir.join("array.sh");
    std::fs::write(
        &job,
        format!(
            "#!/bin/bash\nsleep 1\nd={d}/$SLURMD_NODENAME\necho \"$SLURMD_NODENAME $SLURM_JOB_ID $CUDA_VISIBLE_DEVICES $MIGRUN_LEASE\"\n\
             MIGRUN_STATE_DIR=$d/migrun MIGRUN_SIMULATE=$(cat $d/simulate) {m} status --json > {d}/array-$SLURM_ARRAY_TASK_ID.json\nsleep 2\n",
            d = dir.display(),
            m = MIGRUN
        ),
    )
    .unwrap();
    let out_pat = dir.join("array-%a.out");
    let out = c.run(&[
        "sbatch",
        "--wait",
        "--array=1-16",
        "--mig=1g.10gb",
        "--mig-wait=120",
        "--gres=mig:1",
        "-o",
        out_pat.to_str().unwrap(),
        job.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "the array: {}\n{}",
        text(&out),
        c.logs()
    );
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 1..=16 {
        let line = std::fs::read_to_string(dir.join(format!("array-{i}.out"))).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "array task {i} printed {line:?}");
        let (node, job, uuid, lease) = (
            f[0],
            f[1].parse::<u64>().unwrap(),
            f[2],
            f[3].parse::<u64>().unwrap(),
        );
        assert!(uuid.starts_with("MIG-"), "task {i}: {line}");
        *per_node.entry(node.to_string()).or_default() += 1;
        let st: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("array-{i}.json"))).unwrap(),
        )
        .unwrap();
        let leases = st["leases"].as_array().unwrap();
        let mine: Vec<&Value> = leases.iter().filter(|l| l["mig_uuid"] == uuid).collect();
        assert_eq!(
            mine.len(),
            1,
            "task {i}: its slice is leased exactly once on {node}: {leases:#?}"
        );
        assert_eq!(mine[0]["id"], lease);
        assert_eq!(
            mine[0]["holder"]["job"], job,
            "task {i}: the lease names its own job"
        );
        assert_eq!(
            mine[0]["holder"]["step"], 0xffff_fffbu32,
            "held by the batch step"
        );
        // At that moment no GPU instance was leased twice.
        let mut seen = std::collections::BTreeSet::new();
        for l in leases {
            assert!(
                seen.insert((l["gpu_uuid"].to_string(), l["gi"].to_string())),
                "placed twice: {leases:#?}"
            );
        }
    }
    assert_eq!(per_node.values().sum::<usize>(), 16);
    assert!(
        per_node.len() == 2,
        "the count GRES spread the array over both nodes: {per_node:?}"
    );
    assert_no_leases_but(c, keep, "after the array");
}

/// `sbatch --mig=1g.10gb` of a script that runs `srun`: the step (which inherits the option) shares the batch step's
/// slice instead of taking a second one. A step that only claims a lease in its environment gets its own.
fn steps_in_a_batch_job_share_its_slice(c: &Cluster, keep: &[u64]) {
    let dir = c.dir();
    let job = dir.join("batch-srun.sh");
    std::fs::write(
        &job,
        "#!/bin/bash\necho batch $CUDA_VISIBLE_DEVICES $MIGRUN_LEASE\nsrun bash -c 'echo step $CUDA_VISIBLE_DEVICES $MIGRUN_LEASE'\n",
    )
    .unwrap();
    let out_file = dir.join("batch-srun.out");
    let out = c.run(&[
        "sbatch",
        "--wait",
        "-w",
        NODE1,
        "--mig=1g.10gb",
        "-o",
        out_file.to_str().unwrap(),
        job.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.logs());
    let printed = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<Vec<&str>> = printed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert_eq!((lines[0][0], lines[1][0]), ("batch", "step"), "{printed}");
    assert!(lines[0][1].starts_with("MIG-"), "{printed}");
    assert_eq!(
        lines[0][1..],
        lines[1][1..],
        "the step shares the batch step's slice: {printed}"
    );

    // A forged hint: a manual lease on node1, named in a plain step's environment.
    let o = c
        .migrun(NODE1)
        .args(["alloc", "--profile", "1g.10gb"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let manual = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let mut cmd = c.slurm(
        Duration::from_secs(60),
        &[
            "srun",
            "-w",
            NODE1,
            "--mig=1g.10gb",
            "printenv",
            "MIGRUN_LEASE",
        ],
    );
    let out = cmd.env("MIGRUN_LEASE", &manual).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        manual,
        "a lease the job names is not taken on its word"
    );
    let o = c.migrun(NODE1).args(["release", &manual]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_no_leases_but(c, keep, "after the batch job with a step");
}

/// `--mig-min-mem=20g` picks the smallest profile with 20 GB on each node's own model.
fn min_mem_picks_per_model(c: &Cluster, keep: &[u64]) {
    for (node, want) in [(NODE1, "1g.20gb"), (NODE2, "3g.20gb")] {
        let out = c.run(&[
            "srun",
            "-w",
            node,
            "--mig-min-mem=20g",
            "printenv",
            "MIGRUN_PROFILE",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "on {node}"
        );
    }
    assert_no_leases_but(c, keep, "after --mig-min-mem");
}

/// A step of user `nobody` holds a lease charged to nobody, shown as `slurm job J.0, uid 65534`.
fn charged_to_the_jobs_user(c: &Cluster, keep: &[u64]) {
    let child = spawn(
        c,
        &[
            "srun",
            "--uid=65534",
            "-w",
            NODE2,
            "--mig=1g.10gb",
            "sleep",
            "3",
        ],
    );
    let l = wait_lease(c, NODE2, |l| l["uid"] == 65534);
    let job = l["holder"]["job"].as_u64().unwrap();
    let st = c.migrun(NODE2).arg("status").output().unwrap();
    assert!(
        String::from_utf8_lossy(&st.stdout).contains(&format!("slurm job {job}.0, uid 65534")),
        "{}",
        text(&st)
    );
    let out = finish(child);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_leases_but(c, keep, "after nobody's step");
}

/// A step without --mig: no slice, no variables, no lease.
fn no_mig_costs_nothing(c: &Cluster) {
    for node in [NODE1, NODE2] {
        let out = c.run(&["srun", "-w", node, "env"]);
        assert!(out.status.success(), "{}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            env_var(&s, "MIGRUN_LEASE").is_none() && env_var(&s, "CUDA_VISIBLE_DEVICES").is_none(),
            "{s}"
        );
    }
}
