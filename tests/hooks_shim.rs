//! The runtime shim called directly, the way dockerd's and containerd's runc shim call a runtime,
//! with a recording stand-in as the next runtime (Config.runtime): arguments pass through exactly,
//! the process is exec'd (same pid, same exit code), a `create` that asks gets its slice and the
//! hooks that give it back, and a failed `create` never reaches the runtime.

mod common;
mod hooks_common;

use hooks_common::*;
use migrun::lease::Holder;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Shim {
    sim: Sim,
    link: PathBuf,
    config: PathBuf,
    record: PathBuf,
}

impl Shim {
    /// `migrun-runtime` whose next runtime records its pid, its args and the bundle's config.json, then exits 7
    /// (or the code in `<record>.exit`).
    fn new() -> Shim {
        let sim = Sim::new("h100-80gb:1");
        let dir = sim.tmp.path().join("shim");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("migrun-runtime");
        std::os::unix::fs::symlink(migrun_bin(), &link).unwrap();
        let record = dir.join("record");
        let recorder = dir.join("fake-runc");
        write_exec(
            &recorder,
            &format!(
                "#!/bin/sh\nr='{r}'\necho $$ > \"$r.pid\"\nfor a in \"$@\"; do echo \"$a\"; done > \"$r.args\"\n\
                 while [ $# -gt 0 ]; do case \"$1\" in --bundle|-b) cp \"$2/config.json\" \"$r.config\";; \
                 --bundle=*|-b=*) cp \"${{1#*=}}/config.json\" \"$r.config\";; \
                 --pid-file) [ -f \"$r.initpid\" ] && cp \"$r.initpid\" \"$2\";; esac; shift; done\n\
                 code=7; [ -f \"$r.exit\" ] && code=$(cat \"$r.exit\"); exit $code\n",
                r = record.display()
            ),
        );
        let config = dir.join("config.toml");
        fs::write(&config, format!("runtime = \"{}\"\n", recorder.display())).unwrap();
        Shim {
            sim,
            link,
            config,
            record,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.sim.shim_command(&self.link, &self.config, args)
    }

    /// Make the next runtime exit with `code`.
    fn runtime_exits(&self, code: i32) {
        fs::write(format!("{}.exit", self.record.display()), code.to_string()).unwrap();
    }

    fn recorded(&self, what: &str) -> Option<Vec<u8>> {
        fs::read(format!("{}.{what}", self.record.display())).ok()
    }
}

fn bundle(dir: &Path, spec: &Value) -> (PathBuf, Vec<u8>) {
    let b = dir.join("bundle");
    fs::create_dir_all(&b).unwrap();
    let bytes = serde_json::to_vec_pretty(spec).unwrap();
    fs::write(b.join("config.json"), &bytes).unwrap();
    (b, bytes)
}

fn config(extra: Value) -> Value {
    let mut v = json!({
        "ociVersion": "1.0.2",
        "x-top": {"keep": [1, {"me": true}]},
        "process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/", "x-proc": 1},
        "root": {"path": "rootfs"},
        "linux": {"x-linux": "y"}
    });
    if let (Some(v), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            v.insert(k.clone(), x.clone());
        }
    }
    v
}

/// `create_args` without `--pid-file`: the shim then binds the lease through prestart and poststop hooks.
fn create_args_without_pid_file<'a>(
    b: &'a str,
    root: &'a str,
    log: &'a str,
    id: &'a str,
) -> Vec<&'a str> {
    let mut a = create_args(b, root, log, id);
    let at = a.iter().position(|x| *x == "--pid-file").unwrap();
    a.drain(at..at + 2);
    a
}

fn create_args<'a>(b: &'a str, root: &'a str, log: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "--root",
        root,
        "--log",
        log,
        "--log-format",
        "json",
        "--systemd-cgroup",
        "create",
        "--bundle",
        b,
        "--pid-file",
        "/dev/null",
        "--console-socket",
        "/tmp/none.sock",
        id,
    ]
}

#[test]
fn a_create_that_asks_for_nothing_is_exec_d_unchanged() {
    let s = Shim::new();
    let (b, before) = bundle(s.sim.tmp.path(), &config(json!({})));
    let args = create_args(
        b.to_str().unwrap(),
        "/run/containerd/runc/ns",
        "/dev/null",
        "c1",
    );
    let mut child = s.cmd(&args).spawn().unwrap();
    let pid = child.id();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(7), "the runtime's own exit code");
    let rec_pid: u32 = String::from_utf8(s.recorded("pid").unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        rec_pid, pid,
        "exec, not fork: the runtime has the shim's pid"
    );
    let rec_args = String::from_utf8(s.recorded("args").unwrap()).unwrap();
    assert_eq!(
        rec_args.lines().collect::<Vec<_>>(),
        args,
        "arguments unchanged"
    );
    assert_eq!(
        s.recorded("config").unwrap(),
        before,
        "config.json byte-identical"
    );
    assert_eq!(fs::read(b.join("config.json")).unwrap(), before);
    assert!(
        !s.sim.state_dir().exists(),
        "no state dir for a container that asks for nothing"
    );
}

#[test]
fn every_other_subcommand_passes_through_to_runc() {
    let s = Shim::new();
    for args in [
        &["--root", "/x", "start", "c1"][..],
        &["delete", "--force", "c1"],
        &["features"],
        &["--version"],
        &["-v"],
    ] {
        s.cmd(args).status().unwrap();
        let rec = String::from_utf8(s.recorded("args").unwrap()).unwrap();
        assert_eq!(rec.lines().collect::<Vec<_>>(), args);
    }
    // With real runc as the next runtime, `features` answers exactly what runc answers.
    let runc = common::engines::require("runc");
    let no_config = s.sim.tmp.path().join("none.toml");
    fs::write(&no_config, "").unwrap();
    let ours = s
        .cmd(&["features"])
        .env("MIGRUN_CONFIG", &no_config)
        .output()
        .unwrap();
    let theirs = Command::new(runc).arg("features").output().unwrap();
    assert!(ours.status.success());
    assert_eq!(ours.stdout, theirs.stdout);
    assert!(!s.sim.state_dir().exists());
}

#[test]
fn a_create_without_a_pid_file_gets_its_slice_hooks_and_marker() {
    let s = Shim::new();
    let spec = config(json!({"annotations": {"migrun.lease": "99"}}));
    let mut spec = spec;
    spec["process"]["env"] = json!([
        "PATH=/bin",
        "MIGRUN_PROFILE=1g.10gb",
        "NVIDIA_VISIBLE_DEVICES=all"
    ]);
    let (b, _) = bundle(s.sim.tmp.path(), &spec);
    let args = create_args_without_pid_file(
        b.to_str().unwrap(),
        "/run/containerd/runc/ns",
        "/dev/null",
        "c2",
    );
    s.runtime_exits(0);
    let mut child = s.cmd(&args).spawn().unwrap();
    let shim_pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let leases = s.sim.leases();
    assert_eq!(leases.len(), 1, "log:\n{}", s.sim.log());
    let l = &leases[0];
    // Bound to the id and the bundle the engine passed; until prestart, the waiting shim is its process.
    let Holder::Container { id, engine, pid } = &l.holder else {
        panic!("{:?}", l.holder)
    };
    assert_eq!(
        (id.as_str(), migrun::engine::engine_family(engine)),
        ("c2", "containerd")
    );
    assert_eq!(
        migrun::engine::oci::binding::tag_bundle(engine),
        Some(b.canonicalize().unwrap())
    );
    assert_eq!(pid.map(|p| p.0), Some(shim_pid));
    let rec_pid: u32 = String::from_utf8(s.recorded("pid").unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        rec_pid, shim_pid,
        "a create with a lease runs the runtime as a child"
    );
    let seen: Value = serde_json::from_slice(&s.recorded("config").unwrap()).unwrap();
    assert_eq!(
        nvd_of(&seen),
        std::slice::from_ref(&l.mig_uuid),
        "the runtime got the rewritten config"
    );
    assert_eq!(
        seen["annotations"]["migrun.lease"],
        l.id.to_string(),
        "the forged marker was replaced"
    );
    assert_eq!(seen["x-top"], spec["x-top"]);
    assert_eq!(seen["process"]["x-proc"], 1);
    assert_eq!(seen["linux"]["x-linux"], "y");
    for stage in ["prestart", "poststop"] {
        let hooks = seen["hooks"][stage].as_array().unwrap();
        assert_eq!(hooks.len(), 1, "{stage}: one migrun hook");
        assert_eq!(hooks[0]["args"], json!(["migrun", "hook", stage]));
        assert_eq!(
            hooks[0]["path"],
            json!(fs::canonicalize(migrun_bin()).unwrap())
        );
        let env: Vec<&str> = hooks[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        for want in s.sim.env_strings() {
            assert!(
                env.contains(&want.as_str()),
                "{stage} hook env {env:?} lacks {want}"
            );
        }
        assert!(env.contains(&"MIGRUN_ENGINE=containerd"));
    }
    // A retried create does not allocate twice.
    assert_eq!(s.cmd(&args).status().unwrap().code(), Some(0));
    assert_eq!(s.sim.leases().len(), 1);

    // What runc would do with those hooks: prestart records the pid, poststop releases.
    let hook_env = |stage: &str| -> Vec<(String, String)> {
        seen["hooks"][stage][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let state = json!({"ociVersion": "1.0.2", "id": "c2", "status": "creating", "pid": std::process::id(), "bundle": b});
    let out = run_with_stdin(
        Command::new(migrun_bin())
            .env_clear()
            .envs(hook_env("prestart"))
            .args(["hook", "prestart"]),
        state.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(&s.sim.leases()[0].holder, Holder::Container { pid: Some((p, _)), .. } if *p == std::process::id())
    );
    let out = run_with_stdin(
        Command::new(migrun_bin())
            .env_clear()
            .envs(hook_env("poststop"))
            .args(["hook", "poststop"]),
        state.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.sim.settled_leases().is_empty());
    assert!(s.sim.instances().is_empty());
}

#[test]
fn a_failed_create_never_reaches_the_runtime_and_tells_the_engine_why() {
    let s = Shim::new();
    let out = s
        .sim
        .migrun()
        .args(["alloc", "--profile", "7g.80gb"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut spec = config(json!({}));
    spec["process"]["env"] = json!(["MIGRUN_PROFILE=1g.10gb"]);
    let (b, before) = bundle(s.sim.tmp.path(), &spec);
    let log = s.sim.tmp.path().join("runtime-log.json");
    let args = create_args(
        b.to_str().unwrap(),
        "/var/run/docker/runtime-runc/moby",
        log.to_str().unwrap(),
        "c3",
    );
    let out = s.cmd(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "no room");
    let line = one_line(&out.stderr);
    assert!(line.contains("no room for 1g.10gb"), "{line}");
    assert!(s.recorded("args").is_none(), "the runtime never ran");
    assert_eq!(fs::read(b.join("config.json")).unwrap(), before);
    assert_eq!(s.sim.leases().len(), 1, "only the blocking lease");
    // containerd reads the last error from the runtime log.
    let entry: Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "error");
    assert_eq!(entry["msg"].as_str().unwrap(), line);
    assert!(s.sim.log().contains("no room for 1g.10gb"));

    // A bad bundle is bad input (2), and also never reaches the runtime.
    let args = create_args(
        "/nonexistent/bundle",
        "/run/runc",
        log.to_str().unwrap(),
        "c4",
    );
    let out = s.cmd(&args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.recorded("args").is_none());
}

#[test]
fn a_runtime_that_fails_the_create_gets_the_lease_released_and_its_exit_code_passed_on() {
    let s = Shim::new();
    let mut spec = config(json!({}));
    spec["process"]["env"] = json!(["MIGRUN_PROFILE=1g.10gb"]);
    let (b, _) = bundle(s.sim.tmp.path(), &spec);
    let args = create_args(b.to_str().unwrap(), "/run/runc", "/dev/null", "c5");
    s.runtime_exits(1);
    assert_eq!(s.cmd(&args).status().unwrap().code(), Some(1));
    assert!(s.recorded("args").is_some(), "the runtime ran");
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty());
    // A lease the create only reused (the container a first create made) is never released this way.
    s.runtime_exits(0);
    assert_eq!(s.cmd(&args).status().unwrap().code(), Some(0));
    assert_eq!(s.sim.leases().len(), 1);
    s.runtime_exits(1);
    assert_eq!(s.cmd(&args).status().unwrap().code(), Some(1));
    assert_eq!(
        s.sim.leases().len(),
        1,
        "the first create's container keeps its slice"
    );
}

#[test]
fn the_shim_reads_the_bundle_runc_will_read_and_refuses_what_it_cannot_read() {
    let s = Shim::new();
    let mut asking = config(json!({}));
    asking["process"]["env"] = json!(["MIGRUN_PROFILE=1g.10gb", "NVIDIA_VISIBLE_DEVICES=all"]);
    let (b, _) = bundle(s.sim.tmp.path(), &asking);
    let b = b.to_str().unwrap().to_string();
    // The current directory holds a config that asks for nothing: reading it would pass the call through.
    let cwd = s.sim.tmp.path().join("cwd");
    fs::create_dir_all(&cwd).unwrap();
    fs::write(cwd.join("config.json"), config(json!({})).to_string()).unwrap();
    s.runtime_exits(0);
    for (n, form) in [
        vec!["run", "ID", "--bundle", &b],
        vec!["create", "ID", "-b", &b],
        vec![
            "--root",
            "/run/runc",
            "create",
            "--pid-file",
            "/dev/null",
            "ID",
            &format!("--bundle={b}"),
        ],
        vec!["run", "ID", "-d", "-b", &b],
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("c{n}");
        let form: Vec<&str> = form
            .iter()
            .map(|a| if *a == "ID" { id.as_str() } else { a })
            .collect();
        let out = s.cmd(&form).current_dir(&cwd).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{form:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&s.recorded("config").unwrap()).unwrap();
        assert!(nvd_of(&seen)[0].starts_with("MIG-"), "{form:?}: {seen}");
        let rec = String::from_utf8(s.recorded("args").unwrap()).unwrap();
        assert_eq!(rec.lines().collect::<Vec<_>>(), form, "arguments unchanged");
    }
    // (No prestart ran to record an init pid, so each lease above ends with its shim: gc takes it at the
    // next allocation. That the config had a MIG device is what counts here.)
    let leases = s.sim.leases();
    // What runc would not read as a create of one container is refused, never handed over.
    fs::remove_file(format!("{}.args", s.record.display())).unwrap();
    for form in [
        vec!["create", "--frobnicate", "x", "-b", &b],
        vec!["create", "--no-pivot", "x", "--bundle", &b],
        vec!["create", "-b", &b, "--bundle", &b, "x"],
        vec!["run", "x", "y", "-b", &b],
        vec!["run", "-d", "x", "-b", &b],
    ] {
        let out = s.cmd(&form).current_dir(&cwd).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{form:?}");
        let line = one_line(&out.stderr);
        assert!(line.contains("cannot read runc's"), "{line}");
        assert!(s.recorded("args").is_none(), "{form:?} reached the runtime");
    }
    assert_eq!(s.sim.leases(), leases, "nothing allocated for them");
}

#[test]
fn a_create_with_a_pid_file_is_bound_by_the_shim_and_released_after_the_engine_s_delete() {
    let s = Shim::new();
    let mut spec = config(json!({}));
    spec["process"]["env"] = json!(["PATH=/bin", "MIGRUN_PROFILE=1g.10gb"]);
    let (b, _) = bundle(s.sim.tmp.path(), &spec);
    // The runtime root the engine names; `<root>/<id>` stands for the container runc keeps there.
    let root = s.sim.tmp.path().join("runtime-root");
    fs::create_dir_all(root.join("c5")).unwrap();
    let pid_file = s.sim.tmp.path().join("init.pid");
    let (b_s, root_s, pid_s) = (
        b.to_str().unwrap(),
        root.to_str().unwrap(),
        pid_file.to_str().unwrap(),
    );
    let mut args = create_args(b_s, root_s, "/dev/null", "c5");
    let p = args.iter().rposition(|x| *x == "--pid-file").unwrap();
    args[p + 1] = pid_s;
    // The "init" is this test process (alive for the whole test).
    fs::write(
        format!("{}.initpid", s.record.display()),
        std::process::id().to_string(),
    )
    .unwrap();
    s.runtime_exits(0);
    assert_eq!(
        s.cmd(&args).status().unwrap().code(),
        Some(0),
        "log:\n{}",
        s.sim.log()
    );

    let leases = s.sim.leases();
    assert_eq!(leases.len(), 1, "log:\n{}", s.sim.log());
    let l = leases[0].clone();
    assert!(
        matches!(&l.holder, Holder::Container { id, pid: Some((p, _)), .. } if id == "c5" && *p == std::process::id()),
        "bound to the init pid the runtime wrote: {:?}",
        l.holder
    );
    let seen: Value = serde_json::from_slice(&s.recorded("config").unwrap()).unwrap();
    assert_eq!(nvd_of(&seen), std::slice::from_ref(&l.mig_uuid));
    assert!(
        seen.get("hooks").is_none_or(|h| h
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_array().unwrap().is_empty())),
        "no hooks: {}",
        seen["hooks"]
    );
    let record = s.sim.state_dir().join("shim/c5.json");
    assert!(record.is_file());

    // The same id deleted in another runtime root (another engine) passes through; the lease stays.
    let other = s.sim.tmp.path().join("other-root");
    let other_s = other.to_str().unwrap();
    assert_eq!(
        s.cmd(&["--root", other_s, "delete", "c5"])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let rec = String::from_utf8(s.recorded("args").unwrap()).unwrap();
    assert_eq!(
        rec.lines().collect::<Vec<_>>(),
        ["--root", other_s, "delete", "c5"]
    );
    assert_eq!(s.sim.leases().len(), 1);

    // A delete the runtime refuses while the container is still there keeps the lease, passing the code on.
    s.runtime_exits(1);
    assert_eq!(
        s.cmd(&["--root", root_s, "delete", "c5"])
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
    assert_eq!(s.sim.leases().len(), 1);
    assert!(record.is_file());

    // The runtime removed the container: the delete releases the lease and drops the record.
    fs::remove_dir(root.join("c5")).unwrap();
    s.runtime_exits(0);
    assert_eq!(
        s.cmd(&["--root", root_s, "delete", "--force", "c5"])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty());
    assert!(!record.exists());
}

#[test]
fn a_shim_that_never_bound_the_pid_leaves_the_lease_to_gc_while_the_runtime_holds_the_container() {
    let s = Shim::new();
    let mut spec = config(json!({}));
    spec["process"]["env"] = json!(["PATH=/bin", "MIGRUN_PROFILE=1g.10gb"]);
    let (b, _) = bundle(s.sim.tmp.path(), &spec);
    let root = s.sim.tmp.path().join("runtime-root");
    fs::create_dir_all(root.join("c6")).unwrap();
    let pid_file = s.sim.tmp.path().join("init.pid");
    let mut args = create_args(
        b.to_str().unwrap(),
        root.to_str().unwrap(),
        "/dev/null",
        "c6",
    );
    let p = args.iter().rposition(|x| *x == "--pid-file").unwrap();
    args[p + 1] = pid_file.to_str().unwrap();
    // No init pid written (as if the shim was killed right after the runtime's create): the holder
    // stays the shim's own pid, which is gone once it exits.
    s.runtime_exits(0);
    assert_eq!(s.cmd(&args).status().unwrap().code(), Some(0));
    assert_eq!(s.sim.leases().len(), 1);
    let gc = || {
        let out = s.sim.migrun().arg("gc").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gc();
    assert_eq!(
        s.sim.leases().len(),
        1,
        "the runtime root still holds c6: kept"
    );
    fs::remove_dir(root.join("c6")).unwrap();
    gc();
    assert!(
        s.sim.settled_leases().is_empty(),
        "gone from the runtime and its holder dead: collected"
    );
    assert!(s.sim.instances().is_empty());
}
