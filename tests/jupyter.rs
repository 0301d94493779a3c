//! Jupyter for real on a simulated `h100-80gb:1`, in one private dockerd with migrun's runtime registered
//! (packaging/docker/daemon.json) and the Debian Jupyter image (scripts/jupyter-image.sh, cached on the
//! machine): examples/jupyter-on-a-slice/run.sh runs a real notebook server whose kernel sees the leased
//! MIG UUID; then one real JupyterHub (Debian's 3.0, DockerSpawner 13.0.0 pinned from PyPI, Debian's
//! configurable-http-proxy, DummyAuthenticator) with integrations/jupyterhub/migrun_spawner.py serves
//! alice, bob and carol as issue 19 lists, each slice charged to its user's uid so that
//! `max_leases_per_user` refuses a user's second slice in the spawn's progress. Needs root, docker.io, debootstrap, jupyterhub,
//! node-configurable-http-proxy, python3-websocket (scripts/setup-test-host.sh) and PyPI once; fails
//! otherwise, never skips. One test function: the GPU, the daemon and the image are shared in order.

mod common;
mod hooks_common;
mod jupyter_support;

use common::engines::{self, free_tcp_port, run_ok, unique_name, PrivateDockerd};
use hooks_common::{migrun_bin, Sim};
use jupyter_support::*;
use migrun::lease::Holder;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

#[test]
fn jupyter_on_slices_single_user_and_hub() {
    let sim = Sim::new("h100-80gb:1");
    let docker = PrivateDockerd::start_with_config(daemon_config(&sim.shim()));
    let image = jupyter_image(&docker);
    single_user(&sim, &docker, &image);
    hub(&sim, &docker, &image);
}

/// run.sh start: a real notebook server on a 3g.40gb slice; a cell run through the kernel protocol
/// prints the leased MIG UUID; run.sh stop frees the slice.
fn single_user(sim: &Sim, docker: &PrivateDockerd, image: &str) {
    let port = free_tcp_port();
    let token = format!("{:016x}", std::process::id() as u64 * 7919 + port as u64);
    let work = sim.tmp.path().join("notebooks");
    let name = unique_name("jupyter-on-a-slice");
    let example = |action: &str| {
        let mut c = Command::new("bash");
        c.arg(repo().join("examples/jupyter-on-a-slice/run.sh"))
            .arg(action)
            .envs(sim.env())
            .env("MIGRUN", migrun_bin())
            .env("MIGRUN_INJECT", "env")
            .env("MIGRUN_DOCKER", engines::docker_cli())
            .env("DOCKER", engines::docker_cli())
            .env("DOCKER_HOST", docker.host())
            .env("DOCKER_CONFIG", docker.dir().join("cli-config"))
            .env("IMAGE", image)
            .env("NAME", &name)
            .env("PORT", port.to_string())
            .env("WORKDIR", &work)
            .env("TOKEN", &token)
            .env("NOTEBOOK_DIR", "/home/jovyan/work")
            // Debian's notebook 6 takes the token as NotebookApp's (upstream images' start-notebook.py
            // passes it to jupyter_server's IdentityProvider).
            .env(
                "NOTEBOOK_CMD",
                format!("jupyter-notebook --ip=0.0.0.0 --port=8888 --no-browser --NotebookApp.token={token}"),
            )
            .env("DOCKER_EXTRA", "--pull never");
        c
    };
    let out = run_ok(&mut example("start"));
    assert!(out.contains("3g.40gb"), "status shows the slice: {out}");
    let leases = sim.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let uuid = leases[0].mig_uuid.clone();

    // The server's HTTP API with its token, then a kernel and a cell, as a notebook page does.
    let url = format!("http://127.0.0.1:{port}");
    wait_for(
        "the notebook server's API",
        Duration::from_secs(120),
        || {
            matches!(
                try_http("127.0.0.1", port, "GET", "/api/status", Some(&token), None),
                Ok((200, _))
            )
        },
    );
    let (st, _) = http(
        "127.0.0.1",
        port,
        "GET",
        "/api/status",
        Some("wrong-token"),
        None,
    );
    assert_eq!(st, 403, "the API needs the token");
    let cell = run_ok(
        Command::new("/usr/bin/python3")
            .arg(repo().join("tests/jupyter_support/run_cell.py"))
            .args([&url, &token])
            .arg("import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])"),
    );
    assert_eq!(cell.trim(), uuid, "the kernel sees the leased MIG device");

    let out = run_ok(&mut example("stop"));
    assert!(out.contains("slice released"), "{out}");
    assert!(sim.settled_leases().is_empty(), "{:?}", sim.leases());
    assert!(sim.instances().is_empty(), "the instance is destroyed");
}

/// The leased MIG UUID of `user`'s server: its container's init env names it, and `migrun status
/// --json` has a lease whose holder is that container.
fn slice_of(sim: &Sim, docker: &PrivateDockerd, hub: &Hub, user: &str) -> String {
    let cname = format!("jupyter-{user}");
    let cid = container_id(docker, &cname)
        .unwrap_or_else(|| panic!("no container {cname}\n{}", hub.log()));
    let status: Value =
        serde_json::from_str(&run_ok(sim.migrun().args(["status", "--json"]))).unwrap();
    let lease = status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["holder"]["kind"] == "container" && l["holder"]["id"] == cid.as_str())
        .unwrap_or_else(|| panic!("no lease names container {cid}: {status}"))
        .clone();
    let uuid = lease["mig_uuid"].as_str().unwrap().to_string();
    let env = init_env(docker, &cname);
    assert!(
        env.contains(&format!("NVIDIA_VISIBLE_DEVICES={uuid}")),
        "{user}'s server sees its slice: {env:?}"
    );
    uuid
}

/// The spawn form lists, for every profile, the free count `migrun profiles` reports now, plus no GPU.
fn check_form(sim: &Sim, hub: &Hub, user: &str, cookies: &str) {
    let before = free_counts(sim);
    let page = hub.spawn_page(user, cookies);
    assert_eq!(
        free_counts(sim),
        before,
        "nothing changed while the page loaded"
    );
    assert!(
        page.contains(r#"<option value="none">no GPU</option>"#),
        "{page}"
    );
    assert_eq!(
        form_counts(&page),
        before,
        "the form's free counts are migrun's:\n{page}"
    );
}

fn hub(sim: &Sim, docker: &PrivateDockerd, image: &str) {
    let hub = Hub::start(docker, sim, image);
    for u in ["alice", "bob", "carol"] {
        hub.add_user(u);
    }
    let carol_cookies = hub.login("carol");
    check_form(sim, &hub, "carol", &carol_cookies);
    assert!(
        free_counts(sim)
            .iter()
            .any(|(p, n)| p == "3g.40gb" && *n == 2),
        "an empty H100 has two 3g.40gb"
    );

    // alice and bob each get a 3g.40gb of their own.
    for u in ["alice", "bob"] {
        assert_eq!(
            hub.request_spawn(u, &json!({"profile": "3g.40gb"})),
            202,
            "{}",
            hub.log()
        );
    }
    for u in ["alice", "bob"] {
        let events = hub
            .progress(u)
            .expect("a spawn that takes seconds has a progress stream");
        assert_eq!(
            events.last().unwrap()["ready"],
            true,
            "{u}: {events:?}\n{}",
            hub.log()
        );
    }
    let alice = slice_of(sim, docker, &hub, "alice");
    let bob = slice_of(sim, docker, &hub, "bob");
    assert_ne!(alice, bob, "each on its own slice");
    assert_eq!(sim.leases().len(), 2);
    for l in sim.leases() {
        assert!(
            matches!(l.holder, Holder::Container { .. }),
            "{:?}",
            l.holder
        );
        // Charged to the user (the hub's user_uids), not to root: max_leases_per_user applies.
        let want = if l.mig_uuid == alice { 3001 } else { 3002 };
        assert_eq!(l.uid, want, "{l:?}");
    }
    // The spawner's give-back after a failed start (`release --if-handover-pending`) leaves a lease
    // its container took over alone, saying who holds it.
    let taken = sim
        .leases()
        .into_iter()
        .find(|l| l.mig_uuid == alice)
        .unwrap();
    let note =
        run_ok(
            sim.migrun()
                .args(["release", &taken.id.to_string(), "--if-handover-pending"]),
        );
    assert!(
        note.starts_with(&format!(
            "lease {} not released: docker container",
            taken.id
        )),
        "{note}"
    );
    assert_eq!(sim.leases().len(), 2, "kept: {note}");
    check_form(sim, &hub, "carol", &carol_cookies);

    // carol's 1g.10gb does not fit while two 3g.40gb hold the GPU: the spawn fails with migrun's
    // no-room line, and leaves no lease, no instance and no container.
    let err = hub
        .spawn("carol", &json!({"profile": "1g.10gb"}))
        .expect_err("carol's spawn must fail");
    assert!(
        err.starts_with("Spawn failed: migrun: ") && err.contains(": no room for 1g.10gb on GPU 0"),
        "the no-room line in the progress: {err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    assert_eq!(sim.leases().len(), 2, "{:?}", sim.leases());
    assert_eq!(sim.instances().len(), 2);
    assert_eq!(
        container_id(docker, "jupyter-carol"),
        None,
        "no container left"
    );

    // alice stops: her slice is released (and its instance destroyed); carol's next spawn succeeds.
    hub.stop_server("alice");
    wait_for(
        "alice's slice to be released",
        Duration::from_secs(30),
        || sim.leases().iter().all(|l| l.mig_uuid != alice),
    );
    assert_eq!(sim.leases().len(), 1);
    assert_eq!(sim.instances().len(), 1);
    // The hub drops the server from its model before DockerSpawner has removed the container.
    wait_for("alice's container removed", Duration::from_secs(30), || {
        container_id(docker, "jupyter-alice").is_none()
    });
    assert_eq!(
        hub.request_spawn("carol", &json!({"profile": "1g.10gb"})),
        202
    );
    let events = hub.progress("carol").expect("carol's progress");
    assert_eq!(
        events.last().unwrap()["ready"],
        true,
        "carol's second spawn: {events:?}\n{}",
        hub.log()
    );
    let carol = slice_of(sim, docker, &hub, "carol");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("On slice {carol} (1g.10gb, lease ")))),
        "the progress names the slice: {events:?}"
    );
    assert!(sim
        .leases()
        .iter()
        .any(|l| l.mig_uuid == carol && l.profile == "1g.10gb"));
    assert_eq!(slice_of(sim, docker, &hub, "bob"), bob, "bob kept his");

    // A container that dies takes its slice with it: the hub notices later, migrun at once.
    run_ok(docker.docker_cmd().args(["kill", "jupyter-bob"]));
    wait_for(
        "bob's slice to be released",
        Duration::from_secs(30),
        || sim.leases().iter().all(|l| l.mig_uuid != bob),
    );

    // max_leases_per_user = 1 (the hub's migrun config): alice already holds a slice (a manual lease
    // charged to her uid), so her spawn fails with migrun's per-user-limit line, and leaves nothing.
    let held: Value = serde_json::from_str(&run_ok(sim.migrun().args([
        "alloc",
        "--profile",
        "1g.10gb",
        "--for-uid",
        "3001",
        "--json",
    ])))
    .unwrap();
    let before = sim.leases();
    let err = hub
        .spawn("alice", &json!({"profile": "1g.10gb"}))
        .expect_err("alice's second slice must be refused");
    assert!(
        err.starts_with("Spawn failed: migrun: refused by policy: max_leases_per_user = 1")
            && err.contains("uid 3001 holds 1 lease(s)"),
        "the per-user-limit line in the progress: {err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    assert_eq!(sim.leases(), before, "no lease made");
    assert_eq!(sim.instances().len(), before.len(), "no instance left");
    assert_eq!(container_id(docker, "jupyter-alice"), None, "no container");
    run_ok(sim.migrun().args(["release", &held["lease"].to_string()]));

    // A profile the box does not offer, and a value that is no profile name: refused, nothing made.
    let err = hub.spawn_refused("alice", &json!({"profile": "9g.99gb"}));
    assert!(
        err.contains("profile 9g.99gb is not offered on this hub"),
        "{err}"
    );
    let err = hub.spawn_refused("alice", &json!({"profile": "1g.10gb;rm"}));
    assert!(err.contains("is not a profile name"), "{err}");
    assert_eq!(sim.leases().len(), 1, "{:?}", sim.leases());

    // No GPU: a server without a slice, no lease, and the runtime leaves its env alone.
    hub.spawn("alice", &json!({"profile": "none"}))
        .unwrap_or_else(|e| panic!("alice without a GPU: {e}\n{}", hub.log()));
    assert_eq!(sim.leases().len(), 1);
    assert!(!init_env(docker, "jupyter-alice")
        .iter()
        .any(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES=MIG-")));

    // The hub stops every server when it shuts down: every slice comes back.
    drop(hub);
    wait_for(
        "every slice back after the hub's shutdown",
        Duration::from_secs(30),
        || sim.settled_leases().is_empty(),
    );
    assert!(sim.instances().is_empty());
}

/// The benchmark behind scripts/jupyterhub-bench.sh (docs/benchmarks.md), run in the suite as a smoke
/// of one round (`ROUNDS` unset): every spawn must succeed and give its slice back. Time from the
/// hub's spawn request (POST /users/bench/server) to its progress stream's ready event, for a server
/// on a 1g.10gb slice and one without a GPU, paired in each round (order alternating), on the same hub,
/// daemon and image. Prints every pair, the medians, and the median paired difference and ratio; asserts
/// nothing about speed.
#[test]
fn hub_spawn_bench() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let sim = Sim::new("h100-80gb:1");
    let docker = PrivateDockerd::start_with_config(daemon_config(&sim.shim()));
    let image = jupyter_image(&docker);
    let hub = Hub::start(&docker, &sim, &image);
    hub.add_user("bench");
    let timed = |profile: &str| {
        let t0 = std::time::Instant::now();
        hub.spawn("bench", &json!({ "profile": profile }))
            .unwrap_or_else(|e| panic!("bench spawn ({profile}): {e}\n{}", hub.log()));
        let secs = t0.elapsed().as_secs_f64();
        hub.stop_server("bench");
        // The hub drops the server before DockerSpawner has removed the container (as for alice above).
        wait_for(
            "the bench container removed",
            Duration::from_secs(30),
            || container_id(&docker, "jupyter-bench").is_none(),
        );
        wait_for("the bench slice back", Duration::from_secs(30), || {
            sim.settled_leases().is_empty()
        });
        secs
    };
    // One of each first, unrecorded: the first start of the image pays for cold page caches.
    timed("1g.10gb");
    timed("none");
    let mut pairs = Vec::new();
    for r in 0..rounds {
        let (slice, plain) = if r % 2 == 0 {
            let s = timed("1g.10gb");
            (s, timed("none"))
        } else {
            let p = timed("none");
            (timed("1g.10gb"), p)
        };
        println!("round {r}: slice {slice:.3} s, no GPU {plain:.3} s");
        pairs.push((slice, plain));
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let median = |v: Vec<f64>| {
        let v = sorted(v);
        let n = v.len();
        (v[(n - 1) / 2] + v[n / 2]) / 2.0
    };
    // 95% interval for the median paired difference, as overhead-bench gives it: with the n differences
    // sorted, the j+1-th smallest to the j+1-th largest, j = floor((n - 1.96 sqrt n) / 2).
    let diffs = sorted(pairs.iter().map(|p| p.0 - p.1).collect());
    let n = diffs.len() as f64;
    let j = ((n - 1.96 * n.sqrt()) / 2.0).floor().max(0.0) as usize;
    println!(
        "hub spawn request -> ready server, {rounds} paired rounds: median with a 1g.10gb slice {:.3} s, \
         without a GPU {:.3} s; median paired difference {:+.3} s (95% interval {:+.3} to {:+.3} s), \
         median paired ratio {:.3}",
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
        median(diffs.clone()),
        diffs[j],
        diffs[diffs.len() - 1 - j],
        median(pairs.iter().map(|p| p.0 / p.1).collect()),
    );
}
