//! Bad input to `migrun hook …`: each case exits non-zero with one line on stderr and the same
//! error in the log, and leaves no lease, no instance and config.json byte-identical.

mod common;
mod hooks_common;

use hooks_common::*;
use serde_json::json;
use std::fs;
use std::path::Path;

struct Case<'a> {
    name: &'a str,
    stage: &'a str,
    stdin: Vec<u8>,
    code: i32,
    says: &'a str,
}

fn state(id: &str, bundle: &Path) -> Vec<u8> {
    json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": std::process::id(), "bundle": bundle})
        .to_string()
        .into_bytes()
}

fn check(sim: &Sim, c: &Case, config: Option<&Path>) {
    let before_cfg = config.map(|p| fs::read(p).ok());
    let before_leases = if sim.state_dir().exists() {
        sim.leases()
    } else {
        Vec::new()
    };
    let before_inst = if sim.state_dir().exists() {
        sim.instances().len()
    } else {
        0
    };
    let out = sim.run_hook(c.stage, &c.stdin);
    assert_eq!(
        out.status.code(),
        Some(c.code),
        "{}: {}",
        c.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line(&out.stderr);
    assert!(
        line.starts_with("migrun: ") && line.contains(c.says),
        "{}: {line}",
        c.name
    );
    let msg = line.trim_start_matches("migrun: ");
    let last = sim.log().lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("ERROR") && last.contains(msg),
        "{}: log line {last:?} vs {msg:?}",
        c.name
    );
    assert!(out.stdout.is_empty(), "{}: nothing on stdout", c.name);
    assert_eq!(sim.leases(), before_leases, "{}: no lease left", c.name);
    assert_eq!(
        sim.instances().len(),
        before_inst,
        "{}: no instance created",
        c.name
    );
    if let (Some(p), Some(before)) = (config, before_cfg) {
        assert_eq!(
            fs::read(p).ok(),
            before,
            "{}: config.json byte-identical",
            c.name
        );
    }
}

#[test]
fn every_bad_input_is_one_clear_line_and_changes_nothing() {
    let sim = Sim::new("h100-80gb:1");
    let t = tempfile::tempdir().unwrap();
    let asking = json!({"ociVersion": "1.0.2", "process": {"env": ["PATH=/bin"], "x-unknown": 1},
                        "annotations": {"migrun.profile": "1g.10gb"}});

    // Input that never reaches a bundle.
    for c in [
        Case {
            name: "empty state",
            stage: "prestart",
            stdin: vec![],
            code: 2,
            says: "no container state JSON",
        },
        Case {
            name: "blank state",
            stage: "poststop",
            stdin: b"\n".to_vec(),
            code: 2,
            says: "no container state JSON",
        },
        Case {
            name: "malformed state",
            stage: "prestart",
            stdin: b"{\"id\": ".to_vec(),
            code: 2,
            says: "bad OCI state JSON",
        },
        Case {
            name: "state without id",
            stage: "prestart",
            stdin: br#"{"bundle": "/tmp"}"#.to_vec(),
            code: 2,
            says: "no container \"id\"",
        },
        Case {
            name: "empty config (precreate)",
            stage: "precreate",
            stdin: vec![],
            code: 2,
            says: "no container config JSON",
        },
        Case {
            name: "malformed config (precreate)",
            stage: "precreate",
            stdin: b"[1".to_vec(),
            code: 2,
            says: "invalid OCI config",
        },
        Case {
            name: "missing bundle",
            stage: "prestart",
            stdin: state("c", &t.path().join("gone")),
            code: 2,
            says: "does not exist",
        },
    ] {
        check(&sim, &c, None);
    }

    // A bundle whose config.json cannot be read: it is a directory.
    let unreadable = t.path().join("unreadable");
    fs::create_dir_all(unreadable.join("config.json")).unwrap();
    check(
        &sim,
        &Case {
            name: "unreadable config",
            stage: "prestart",
            stdin: state("c", &unreadable),
            code: 2,
            says: "cannot read",
        },
        None,
    );

    // Invalid config.json contents, and requests that cannot be satisfied.
    let b = t.path().join("b");
    fs::create_dir_all(&b).unwrap();
    let cfg = b.join("config.json");
    let with_profile = |p: &str| {
        let mut v = asking.clone();
        v["annotations"]["migrun.profile"] = json!(p);
        serde_json::to_vec_pretty(&v).unwrap()
    };
    for (name, content, code, says) in [
        (
            "not JSON",
            b"{\"process\": ".to_vec(),
            2,
            "invalid OCI config",
        ),
        (
            "env not strings",
            br#"{"process": {"env": [1]}, "annotations": {"migrun.profile": "1g.10gb"}}"#.to_vec(),
            2,
            "process.env",
        ),
        ("bad profile", with_profile("banana"), 2, "bad profile"),
        (
            "unknown profile",
            with_profile("5g.99gb"),
            2,
            "does not exist on GPU 0",
        ),
    ] {
        fs::write(&cfg, &content).unwrap();
        check(
            &sim,
            &Case {
                name,
                stage: "prestart",
                stdin: state("c", &b),
                code,
                says,
            },
            Some(&cfg),
        );
        // The same config through precreate (podman): same error, nothing printed.
        check(
            &sim,
            &Case {
                name,
                stage: "precreate",
                stdin: content,
                code,
                says,
            },
            None,
        );
    }

    // No room: the whole GPU is taken by someone else's lease.
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
    fs::write(&cfg, with_profile("1g.10gb")).unwrap();
    check(
        &sim,
        &Case {
            name: "no room",
            stage: "prestart",
            stdin: state("c", &b),
            code: 3,
            says: "no room",
        },
        Some(&cfg),
    );
    check(
        &sim,
        &Case {
            name: "no room (precreate)",
            stage: "precreate",
            stdin: with_profile("1g.10gb"),
            code: 3,
            says: "no room",
        },
        None,
    );
    assert_eq!(sim.leases().len(), 1, "only the blocking lease");
}

#[test]
fn a_hook_that_cannot_finish_in_time_fails_cleanly_and_logs_where_configured() {
    let sim = Sim::new("h100-80gb:1");
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("hooks.log");
    let config = t.path().join("config.toml");
    fs::write(
        &config,
        format!("hook_timeout_s = 1\nlog = \"{}\"\n", log.display()),
    )
    .unwrap();
    let b = t.path().join("b");
    fs::create_dir_all(&b).unwrap();
    let cfg = b.join("config.json");
    fs::write(
        &cfg,
        br#"{"ociVersion": "1.0.2", "annotations": {"migrun.profile": "1g.10gb"}}"#,
    )
    .unwrap();
    let before = fs::read(&cfg).unwrap();

    // Someone holds the allocation lock for longer than the hook may take.
    assert!(sim.settled_leases().is_empty());
    let lock = migrun::statedir::lock_file(&sim.state_dir().join("alloc.lock")).unwrap();
    let t0 = std::time::Instant::now();
    let out = run_with_stdin(
        sim.migrun()
            .env("MIGRUN_CONFIG", &config)
            .args(["hook", "prestart"]),
        &state("slow", &b),
    );
    let took = t0.elapsed();
    drop(lock);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("timed out after 1 s") && line.contains("not started"),
        "{line}"
    );
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(fs::read(&cfg).unwrap(), before);
    assert!(sim.settled_leases().is_empty());
    assert!(sim.instances().is_empty());
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ERROR") && logged.contains("timed out after 1 s"),
        "{logged}"
    );
    assert!(
        !sim.state_dir().join("migrun.log").exists(),
        "logged only where configured"
    );
}
