//! The engine matrix: one set of engine tests, run against each engine set (`common::engines::EngineSet`,
//! tests/common/engine_set.rs): the host's Debian 12 engines (dockerd 20.10, containerd 1.6, podman 4.3, runc) and Debian 13's from the
//! root scripts/trixie-root.sh builds (dockerd 26, containerd 1.7, podman 5, runc and crun). The `matrix!`
//! macro generates `bookworm::*` and `trixie::*` from the same functions (the CDI ones live in
//! tests/engines_matrix_support/), so the two never drift apart;
//! every failure names its set, and where the generations differ (CDI in Docker, the Compose plugin) the
//! test checks what the set's engine reports against what its version must do and prints what it saw.
//! Needs root, the host's engines and the Debian 13 root (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod engines_matrix_support;
mod hooks_common;

use common::engines::{
    busybox_image, run_ok, run_output, shared_containerd_in, shared_dockerd_in, unique_name,
    EngineSet, Podman, PrivateDockerd,
};
use engines_matrix_support::{
    compose_cdi, containerd_cri_cdi, docker_cdi, podman_cdi, text, wait_for, Machine,
};
use hooks_common::{migrun_bin, Sim};
use migrun::engine::docker::{option_kind, short_option, OptionKind};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

macro_rules! matrix {
    ($($set:ident => $module:ident),* $(,)?) => {$(
        mod $module {
            use super::*;
            const SET: EngineSet = EngineSet::$set;
            #[test]
            fn launcher_on_docker() { super::launcher_on_docker(SET) }
            #[test]
            fn shim_under_dockerd() { super::shim_under_dockerd(SET) }
            #[test]
            fn shim_under_containerd_ctr() { super::shim_under_containerd_ctr(SET) }
            #[test]
            fn containerd_cri_cdi() { super::containerd_cri_cdi(SET) }
            #[test]
            fn podman_hooks_d() { super::podman_hooks_d(SET) }
            #[test]
            fn podman_cdi() { super::podman_cdi(SET) }
            #[test]
            fn docker_cdi() { super::docker_cdi(SET) }
            #[test]
            fn compose_cdi() { super::compose_cdi(SET) }
            #[test]
            fn docker_option_table() { super::docker_option_table(SET) }
        }
    )*};
}

matrix!(Bookworm => bookworm, Trixie => trixie);

/// A machine without the Debian 13 root: the script's `path` and `run` fail with a one-line error naming
/// the fix (which is what makes every trixie test fail, never skip, there).
#[test]
fn a_missing_debian_13_root_is_an_error_naming_the_fix() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/trixie-root.sh");
    let empty = tempfile::tempdir().unwrap();
    for args in [&["path"][..], &["run", "--", "true"]] {
        let out = run_output(
            Command::new("bash")
                .arg(&script)
                .args(args)
                .env("CACHE", empty.path()),
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.lines().count() == 1
                && err.contains("Debian 13 root")
                && err.contains("missing")
                && err.contains("run scripts/setup-test-host.sh as root"),
            "{args:?}: {err}"
        );
    }
}

/// `migrun --profile 1g.10gb --inject env IMAGE …` on the set's dockerd: the container sees its slice and
/// the slice is back when the launcher returns.
fn launcher_on_docker(set: EngineSet) {
    let docker = shared_dockerd_in(set);
    let image = busybox_image(docker);
    println!("[{}] launcher on {}", set.name(), set.version("dockerd"));
    let m = Machine::new();
    let out = run_ok(
        m.migrun(set, Some(docker))
            .args(["--profile", "1g.10gb", "--inject", "env", "--pull", "never"])
            .args(["--rm", &image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(out.trim().starts_with("MIG-"), "[{}] {out:?}", set.name());
    assert!(
        m.sim.settled_leases().is_empty(),
        "[{}] lease left",
        set.name()
    );
    assert!(
        m.sim.instances().is_empty(),
        "[{}] instance left",
        set.name()
    );
}

/// The packaged daemon.json runtime entry, pointed at this test's shim.
fn shim_daemon_config(shim: &Path) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/docker/daemon.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    v["runtimes"]["migrun"]["path"] = Value::String(shim.display().to_string());
    v
}

/// dockerd with `migrun-runtime` registered: `docker run --runtime migrun -e MIGRUN_PROFILE=…` sees its
/// slice, which is released when the container is gone.
fn shim_under_dockerd(set: EngineSet) {
    let sim = Sim::new("h100-80gb:1");
    let docker = PrivateDockerd::start_in(set, shim_daemon_config(&sim.shim()));
    let image = busybox_image(&docker);
    let out = run_ok(
        docker
            .run_cmd()
            .args(["--runtime", "migrun", "-e", "MIGRUN_PROFILE=1g.10gb"])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(
        out.trim().starts_with("MIG-"),
        "[{}] {out:?}\nlog:\n{}",
        set.name(),
        sim.log()
    );
    wait_for(set, "the --rm release", || sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty(), "[{}]", set.name());
    println!("[{}] shim under {}: ok", set.name(), set.version("dockerd"));
}

/// containerd's runc v2 shim with migrun-runtime as its runc binary (`ctr run --runc-binary`).
fn shim_under_containerd_ctr(set: EngineSet) {
    let sim = Sim::new("h100-80gb:1");
    let ctrd = shared_containerd_in(set);
    let id = unique_name("matrix-ctr");
    let out = run_ok(&mut ctrd.run_cmd(
        &id,
        Some(&sim.shim()),
        &["--env", "MIGRUN_PROFILE=1g.10gb"],
        &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"],
    ));
    assert!(
        out.trim().starts_with("MIG-"),
        "[{}] {out:?}\nlog:\n{}",
        set.name(),
        sim.log()
    );
    wait_for(set, "the release after exit", || {
        sim.settled_leases().is_empty()
    });
    assert!(sim.instances().is_empty(), "[{}]", set.name());
    assert!(
        sim.log().contains("engine=\"containerd\""),
        "[{}] {}",
        set.name(),
        sim.log()
    );
    println!(
        "[{}] shim under {} via ctr: ok",
        set.name(),
        set.version("containerd")
    );
}

/// The repo's hooks.d files, pointed at the binary under test with the simulator's env.
fn hooks_dir(sim: &Sim) -> PathBuf {
    let dir = sim.tmp.path().join("hooks.d");
    fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        v["hook"]["path"] = Value::String(migrun_bin().display().to_string());
        v["hook"]["env"] = json!(sim.env_strings());
        fs::write(
            dir.join(p.file_name().unwrap()),
            serde_json::to_vec(&v).unwrap(),
        )
        .unwrap();
    }
    dir
}

/// podman with the repo's hooks.d files, under each OCI runtime the set has (runc; runc and crun on
/// podman 5): an annotated container sees its slice and gives it back.
fn podman_hooks_d(set: EngineSet) {
    for rt in set.oci_runtimes() {
        let sim = Sim::new("h100-80gb:1");
        let podman = Podman::new_in(set, None)
            .hooks_dir(hooks_dir(&sim))
            .runtime(*rt);
        let image = podman.busybox_image();
        let out = run_ok(
            podman
                .run_cmd()
                .args(["--annotation", "migrun.profile=1g.10gb"])
                .arg(&image)
                .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
        );
        assert!(
            out.trim().starts_with("MIG-"),
            "[{} podman + {rt}] {out:?}\nlog:\n{}",
            set.name(),
            sim.log()
        );
        wait_for(set, "the release after exit", || {
            sim.settled_leases().is_empty()
        });
        assert!(sim.instances().is_empty(), "[{} podman + {rt}]", set.name());
        println!(
            "[{}] {} + {rt}: hooks.d ok",
            set.name(),
            set.version("podman")
        );
    }
}

/// Every option of the set's `docker run --help` is in migrun's table, with the same kind (a value or a
/// switch) and short form. An option the CLI knows and the table does not is a failure naming it.
fn docker_option_table(set: EngineSet) {
    let cli = set.bin("docker");
    let out = run_ok(Command::new(&cli).args(["run", "--help"]));
    let version = text(&run_output(Command::new(&cli).arg("--version")).stdout);
    let parsed = parse_run_help(&out);
    // The parser itself: a value with its short form, a switch with one, a switch without.
    for want in [
        (Some('e'), "env".to_string(), true),
        (Some('d'), "detach".to_string(), false),
        (None, "rm".to_string(), false),
        (None, "device".to_string(), true),
    ] {
        assert!(
            parsed.contains(&want),
            "[{}] {want:?} not read from:\n{out}",
            set.name()
        );
    }
    let mut problems = Vec::new();
    let mut n = 0;
    for (short, long, takes_value) in parsed {
        n += 1;
        let want = if takes_value {
            OptionKind::Value
        } else {
            OptionKind::Switch
        };
        match option_kind(&long) {
            None => problems.push(format!("--{long} ({want:?}) is not in migrun's table")),
            Some(k) if k != want => problems.push(format!(
                "--{long} is a {want:?} for docker, a {k:?} in migrun's table"
            )),
            Some(_) => {}
        }
        if let Some(c) = short {
            if short_option(c) != Some(long.as_str()) {
                problems.push(format!(
                    "-{c} is --{long} for docker, {:?} in migrun's table",
                    short_option(c)
                ));
            }
        }
    }
    assert!(
        n > 80,
        "[{}] parsed only {n} options of:\n{out}",
        set.name()
    );
    assert!(
        problems.is_empty(),
        "[{}] {}: migrun's docker option table (src/engine/docker/options.rs) lacks what `docker run --help` lists:\n{}",
        set.name(),
        version.trim(),
        problems.join("\n")
    );
    println!(
        "[{}] {}: all {n} `docker run` options known",
        set.name(),
        version.trim()
    );
}

/// `(short, long, takes a value)` for each option line of pflag's help: `  -e, --env list   Set…` or
/// `      --rm   Automatically…` (a value's type follows the name after one space; the description after
/// two or more).
fn parse_run_help(help: &str) -> Vec<(Option<char>, String, bool)> {
    let mut opts = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let (short, rest) = match t.strip_prefix('-') {
            Some(r) if !r.starts_with('-') && r.chars().nth(1) == Some(',') => {
                (r.chars().next(), r[2..].trim_start())
            }
            _ => (None, t),
        };
        let Some(rest) = rest.strip_prefix("--") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let after = &rest[name.len()..];
        let takes_value = after.starts_with(' ') && !after.starts_with("  ") && after.len() > 1;
        opts.push((short, name, takes_value));
    }
    opts
}
