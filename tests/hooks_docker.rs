//! dockerd with migrun's shim registered as a runtime (packaging/docker/daemon.json, path pointed
//! at a `migrun-runtime` symlink to the binary under test): `docker run --runtime migrun -e
//! MIGRUN_PROFILE=1g.10gb` sees its MIG UUID and the slice is released after exit, with and without
//! `--rm`. Needs root and docker.io (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{busybox_image, run_ok, unique_name, PrivateDockerd};
use hooks_common::*;
use migrun::lease::Holder;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The packaged daemon.json runtime entry, with the path pointed at this test's shim.
fn daemon_config(shim: &Path) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/docker/daemon.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    assert_eq!(v["runtimes"]["migrun"]["path"], "/usr/bin/migrun-runtime");
    v["runtimes"]["migrun"]["path"] = Value::String(shim.display().to_string());
    v
}

#[test]
fn docker_containers_get_a_slice_through_the_shim_and_give_it_back() {
    let sim = Sim::new("h100-80gb:1");
    let docker = PrivateDockerd::start_with_config(daemon_config(&sim.shim()));
    let image = busybox_image(&docker);

    // --rm: the env inside names the MIG device; the slice is back once docker run returns.
    let out = run_ok(
        docker
            .run_cmd()
            .args([
                "--runtime",
                "migrun",
                "-e",
                "MIGRUN_PROFILE=1g.10gb",
                "-e",
                "NVIDIA_VISIBLE_DEVICES=all",
            ])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(
        out.trim().starts_with("MIG-"),
        "{out:?}\nlog:\n{}",
        sim.log()
    );
    wait_for("the --rm release", || sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty());
    assert!(sim.log().contains(out.trim()), "{}", sim.log());

    // Without --rm: the lease is the container's (docker, its id, then its init pid) while it runs,
    // and is released when it stops; removing it afterwards finds nothing left to release.
    let name = unique_name("hooks-docker");
    let id = run_ok(
        docker
            .docker_cmd()
            .args([
                "run",
                "-d",
                "--pull",
                "never",
                "--name",
                &name,
                "--runtime",
                "migrun",
            ])
            .args(["-e", "MIGRUN_PROFILE=1g.10gb"])
            .arg(&image)
            .args(["sleep", "600"]),
    )
    .trim()
    .to_string();
    let leases = sim.leases();
    assert_eq!(leases.len(), 1, "log:\n{}", sim.log());
    match &leases[0].holder {
        Holder::Container { id: c, engine, pid } => {
            assert_eq!(
                (c.as_str(), migrun::engine::engine_family(engine)),
                (id.as_str(), "docker")
            );
            assert!(
                migrun::engine::oci::binding::tag_bundle(engine).is_some(),
                "bound to its bundle: {engine}"
            );
            assert!(
                pid.is_some(),
                "the shim's prestart hook recorded the init pid"
            );
        }
        h => panic!("holder {h:?}"),
    }
    // `docker exec` gets docker's stored env, not the shim's rewrite: look at the init process.
    let env = run_ok(docker.docker_cmd().args([
        "exec",
        &name,
        "sh",
        "-c",
        "tr '\\0' '\\n' < /proc/1/environ",
    ]));
    assert!(
        env.lines()
            .any(|l| l == format!("NVIDIA_VISIBLE_DEVICES={}", leases[0].mig_uuid)),
        "{env}"
    );
    run_ok(docker.docker_cmd().args(["stop", "-t", "0", &name]));
    wait_for("the release at stop", || sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty());
    run_ok(docker.docker_cmd().args(["rm", &name]));
    assert!(sim.settled_leases().is_empty());

    // A container that asks for nothing runs as usual through the shim, touching no state.
    let before = sim.log();
    let out = run_ok(
        docker
            .run_cmd()
            .args(["--runtime", "migrun"])
            .arg(&image)
            .args(["echo", "plain"]),
    );
    assert_eq!(out.trim(), "plain");
    assert_eq!(
        sim.log(),
        before,
        "nothing logged for a container that asks for nothing"
    );

    // No room: docker run fails with migrun's message, and the container never starts.
    let out = sim
        .migrun()
        .args(["alloc", "--profile", "7g.80gb"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker
        .run_cmd()
        .args(["--runtime", "migrun", "-e", "MIGRUN_PROFILE=1g.10gb"])
        .arg(&image)
        .args(["echo", "must not run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must not run"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no room for 1g.10gb"), "{err}");
    assert_eq!(sim.leases().len(), 1, "only the blocking lease");
}
