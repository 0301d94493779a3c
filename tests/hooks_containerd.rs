//! containerd with migrun's shim as the runc binary of io.containerd.runc.v2 (`ctr run
//! --runc-binary`): the container sees its MIG UUID and the slice is released after exit. Also
//! checks that containerd accepts the packaged runtime handler (packaging/containerd/migrun-v2.toml).
//! Needs root and containerd (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{require, run_ok, shared_containerd, unique_name};
use hooks_common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
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

#[test]
fn ctr_run_through_the_shim_gets_a_slice_and_gives_it_back() {
    let sim = Sim::new("h100-80gb:1");
    let shim = sim.shim();
    let ctrd = shared_containerd();

    let id = unique_name("hooks-ctr");
    let out = run_ok(&mut ctrd.run_cmd(
        &id,
        Some(&shim),
        &["--env", "MIGRUN_PROFILE=1g.10gb"],
        &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"],
    ));
    assert!(
        out.trim().starts_with("MIG-"),
        "{out:?}\nlog:\n{}",
        sim.log()
    );
    wait_for("the release after exit", || sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty());
    let log = sim.log();
    assert!(
        log.contains(&format!("id={id}")) && log.contains("engine=\"containerd\""),
        "{log}"
    );
    assert!(
        log.contains(out.trim()) && log.contains("destroyed"),
        "{log}"
    );

    // A container that asks for nothing runs as usual and touches no state.
    let out = run_ok(&mut ctrd.run_cmd(
        &unique_name("hooks-ctr"),
        Some(&shim),
        &[],
        &["echo", "plain"],
    ));
    assert_eq!(out.trim(), "plain");
    assert_eq!(sim.log(), log);
}

#[test]
fn containerd_accepts_the_packaged_runtime_handler() {
    let containerd = require("containerd");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/containerd/migrun-v2.toml");
    let out = Command::new(containerd)
        .arg("--config")
        .arg(&src)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Read containerd's own dump back: the handler and its options are what containerd will use.
    let dump: toml::Value = toml::from_str(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    let h = &dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["migrun"];
    assert_eq!(
        h["runtime_type"].as_str(),
        Some("io.containerd.runc.v2"),
        "{h}"
    );
    assert_eq!(
        h["options"]["BinaryName"].as_str(),
        Some("/usr/bin/migrun-runtime"),
        "{h}"
    );
    assert_eq!(h["pod_annotations"][0].as_str(), Some("migrun.*"), "{h}");
    assert_eq!(
        h["container_annotations"][0].as_str(),
        Some("migrun.*"),
        "{h}"
    );
    // The v3 file is the same handler for containerd 2.x (not installed here): same keys.
    let v3 = fs::read_to_string(src.with_file_name("migrun-v3.toml")).unwrap();
    let v3: toml::Value = toml::from_str(&v3).unwrap();
    let h = &v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["migrun"];
    assert_eq!(h["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(
        h["options"]["BinaryName"].as_str(),
        Some("/usr/bin/migrun-runtime")
    );
    assert_eq!(v3["version"].as_integer(), Some(3));
}
