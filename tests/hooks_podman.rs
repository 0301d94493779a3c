//! podman with the repo's hooks.d files (hooks/): `--annotation migrun.profile=1g.10gb` shows the
//! MIG UUID inside the container and the slice is released after exit; a container without the
//! annotation never runs migrun. Needs root and podman (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{run_ok, unique_name, Podman};
use hooks_common::*;
use migrun::lease::Holder;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repo's hooks.d files, copied with the path pointing at the binary under test and the
/// simulator's env added (podman runs hooks with the env of the hooks.d file only).
fn hooks_dir(sim: &Sim) -> PathBuf {
    let dir = sim.tmp.path().join("hooks.d");
    fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
    let mut n = 0;
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(
            v["hook"]["path"], "/usr/bin/migrun",
            "{p:?}: the packaged path"
        );
        assert!(
            v["when"]["annotations"]["^migrun\\.profile$"].is_string(),
            "{p:?}: filtered on migrun.profile"
        );
        v["hook"]["path"] = Value::String(migrun_bin().display().to_string());
        v["hook"]["env"] = serde_json::json!(sim.env_strings());
        fs::write(
            dir.join(p.file_name().unwrap()),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
        n += 1;
    }
    assert_eq!(n, 3, "precreate, prestart and poststop");
    dir
}

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

#[test]
fn an_annotated_container_sees_its_slice_and_gives_it_back() {
    let sim = Sim::new("h100-80gb:1");
    let podman = Podman::new().hooks_dir(hooks_dir(&sim));
    let image = podman.busybox_image();

    // --rm, foreground: the env inside names the MIG device, and the slice is back after exit.
    let out = run_ok(
        podman
            .run_cmd()
            .args([
                "--annotation",
                "migrun.profile=1g.10gb",
                "-e",
                "NVIDIA_VISIBLE_DEVICES=all",
            ])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE"]),
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{out:?}\nlog:\n{}", sim.log());
    assert!(words[0].starts_with("MIG-"), "{out:?}");
    assert!(
        sim.settled_leases().is_empty(),
        "released after exit; log:\n{}",
        sim.log()
    );
    assert!(sim.instances().is_empty());
    let log = sim.log();
    assert!(
        log.contains(&format!("allocated lease {}", words[1])),
        "{log}"
    );
    assert!(log.contains(words[0]) && log.contains("destroyed"), "{log}");

    // Detached: the lease moves from podman to the container (id, pid) and ends with it.
    let name = unique_name("hooks-podman");
    let id = run_ok(
        podman
            .podman_cmd()
            .args([
                "run",
                "-d",
                "--pull",
                "never",
                "--network",
                "none",
                "--name",
                &name,
            ])
            .args(common::engines::PODMAN_ULIMITS)
            .args(["--annotation", "migrun.profile=1g.10gb"])
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
                (id.as_str(), "podman")
            );
            assert!(
                migrun::engine::oci::binding::tag_bundle(engine).is_some(),
                "bound to its bundle: {engine}"
            );
            assert!(pid.is_some());
        }
        h => panic!("holder {h:?}"),
    }
    // `podman exec` gets podman's stored env, not the precreate one: look at the init process.
    let env = run_ok(podman.podman_cmd().args([
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
    run_ok(podman.podman_cmd().args(["rm", "-f", "-t", "0", &name]));
    wait_for("the poststop release", || sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty());
}

#[test]
fn a_container_without_the_annotation_never_runs_migrun() {
    let sim = Sim::new("h100-80gb:1");
    let podman = Podman::new().hooks_dir(hooks_dir(&sim));
    let image = podman.busybox_image();
    let out =
        run_ok(
            podman
                .run_cmd()
                .arg(&image)
                .args(["sh", "-c", "echo [$NVIDIA_VISIBLE_DEVICES]"]),
        );
    assert_eq!(out.trim(), "[]");
    assert!(!sim.state_dir().exists(), "no hook ran");
}

#[test]
fn no_room_fails_the_start_with_migrun_s_message() {
    let sim = Sim::new("h100-80gb:1");
    let podman = Podman::new().hooks_dir(hooks_dir(&sim));
    let image = podman.busybox_image();
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
    let out = podman
        .run_cmd()
        .args(["--annotation", "migrun.profile=1g.10gb"])
        .arg(&image)
        .args(["echo", "must not run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must not run"));
    // podman shows only the hook's exit status; migrun's one line is in its log.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("precreate hook") && err.contains("exit status 3"),
        "{err}"
    );
    let last = sim.log().lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("ERROR") && last.contains("no room for 1g.10gb"),
        "{last}"
    );
    assert_eq!(sim.leases().len(), 1, "only the blocking lease");
    assert_eq!(sim.instances().len(), 1);
}

#[test]
fn a_podman_container_naming_another_holders_lease_gets_its_own_and_leaves_that_one_alone() {
    let sim = Sim::new("h100-80gb:1");
    let podman = Podman::new().hooks_dir(hooks_dir(&sim));
    let image = podman.busybox_image();
    // The victim: a lease held by a live process, as a Slurm job's or a hub's.
    let mut holder = std::process::Command::new(common::engines::busybox_static())
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    let out = sim
        .migrun()
        .args(["alloc", "--profile", "1g.10gb", "--holder-pid"])
        .arg(holder.id().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let victim = sim.leases().remove(0);
    let out = run_ok(
        podman
            .run_cmd()
            .args(["--annotation", "migrun.profile=1g.10gb"])
            .args(["--annotation", &format!("migrun.lease={}", victim.id)])
            .args([
                "--annotation",
                "migrun.handover=0123456789abcdef0123456789abcdef",
            ])
            .args(["-e", &format!("NVIDIA_VISIBLE_DEVICES={}", victim.mig_uuid)])
            .args(["-e", &format!("MIGRUN_LEASE={}", victim.id)])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE"]),
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{out:?}\nlog:\n{}", sim.log());
    assert_ne!(words[0], victim.mig_uuid, "a slice of its own");
    assert_ne!(words[1], victim.id.to_string());
    assert_eq!(
        sim.leases(),
        vec![victim.clone()],
        "its own lease is gone after exit, the victim's is as it was; log:\n{}",
        sim.log()
    );
    assert_eq!(sim.instances().len(), 1);
    let handovers = sim.state_dir().join("handover");
    assert_eq!(
        fs::read_dir(&handovers).map(|d| d.count()).unwrap_or(0),
        0,
        "the used hand-over record is gone"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}
