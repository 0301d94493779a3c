//! overhead-bench's CDI rows (issue 17): the runtime shim injecting a slice by CDI in front of plain runc, podman's precreate hook with CDI edits, and one lease spec built and written; it must not change the product's behaviour.
//!
//! Each comparison is paired as in the parent module. The shim rows pair `migrun-runtime run` of a
//! bundle asking for `1g.10gb` (the shim allocates, writes the lease's CDI edits into config.json and
//! adds its prestart and poststop hooks, which runc runs) against `runc run` of the same bundle
//! without any request: the difference is everything migrun adds to runc's own create, start and
//! delete. The same with `hook_inject = "env"` separates CDI's share. The precreate rows pair the hook
//! with CDI edits against the same hook injecting env only. The spec rows run in this process: build,
//! validate and write one lease spec (what every allocation does before it returns the lease) against
//! the atomic write of one lease record of the same state dir (what every allocation does anyway).

use super::{
    failed, run_pairs, run_pairs_of, shim_command, shim_link, timed, Bundle, Machine,
    OverheadError, Result, RuncTarget,
};
use migrun::cdi::{self, store, toolkit};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The toolkit spec fixture whose common edits (mounts, hooks, env) the "with toolkit" rows copy.
const TOOLKIT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/toolkit-cdi/nvidia.yaml"
);

/// Case labels of [`shim`], for the docs and the smoke check.
pub const SHIM_CDI: &str =
    "shim, hook_inject = cdi: create + destroy 1g.10gb (prestart + poststop)";
pub const SHIM_ENV: &str =
    "shim, hook_inject = env: create + destroy 1g.10gb (prestart + poststop)";

/// The shim with `hook_inject = "cdi"` and with `"env"`, each against plain `runc run`, on a
/// machine with one GPU; every run creates the instance and its poststop destroys it.
pub fn shim(t: &RuncTarget, m: &Machine, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let plain = Bundle::new(t, m.dir(), "bundle-cdi-plain", |_| {})?;
    let asking = Bundle::new(t, m.dir(), "bundle-cdi-asking", |s| {
        s["annotations"] = serde_json::json!({"migrun.profile": "1g.10gb"});
    })?;
    let link = shim_link(m)?;
    let mut rows = Vec::new();
    for (inject, case) in [("cdi", SHIM_CDI), ("env", SHIM_ENV)] {
        let cfg = m.config(
            &format!("shim-{inject}.toml"),
            &format!(
                "runtime = \"{}\"\nhook_inject = \"{inject}\"\n",
                t.runc.display()
            ),
        )?;
        let shim_run = || {
            asking.restore()?;
            timed(&mut shim_command(m, &link, &cfg, t, &asking))
        };
        let p = run_pairs(pairs, warmup, shim_run, || plain.run(m, &t.runc, &t.root))?;
        m.expect(&format!("after the shim runs ({inject})"), 0, 0)?;
        rows.push(p.row(case, m.backend.name()));
    }
    // What engines call: `create --pid-file`, `start`, `delete`. The shim binds the lease itself
    // (no hooks), so migrun runs once for the create and once for the delete.
    for (inject, case) in [("cdi", SHIM_ENGINE_CDI), ("env", SHIM_ENGINE_ENV)] {
        let cfg = m.config(
            &format!("shim-{inject}.toml"),
            &format!(
                "runtime = \"{}\"\nhook_inject = \"{inject}\"\n",
                t.runc.display()
            ),
        )?;
        // Each call timed alone, and the three together as one more step.
        let with_total =
            |calls: [Duration; 3]| [calls[0], calls[1], calls[2], calls.iter().sum::<Duration>()];
        let shim_calls = || {
            asking.restore()?;
            engine_calls(m, &link, Some(&cfg), t, &asking).map(with_total)
        };
        let runc_calls = || {
            plain.restore()?;
            engine_calls(m, &t.runc, None, t, &plain).map(with_total)
        };
        let [create, start, delete, all] = run_pairs_of(pairs, warmup, shim_calls, runc_calls)?;
        m.expect(&format!("after the shim's engine calls ({inject})"), 0, 0)?;
        rows.push(all.row(case, m.backend.name()));
        if inject == "cdi" {
            for (p, call) in [create, start, delete].iter().zip(SHIM_CALLS_CDI) {
                rows.push(p.row(call, m.backend.name()));
            }
        }
    }
    // What runc itself charges for the slice's device nodes and cgroup rules: the same bundle with a
    // slice's CDI edits already written into config.json (as the shim writes them), no migrun at all.
    let edits = slice_edits()?;
    let mut applied = Err(failed("not applied"));
    let with_nodes = Bundle::new(t, m.dir(), "bundle-cdi-applied", |s| {
        applied = migrun::cdi::apply_edits(s, &edits).map_err(failed);
    })?;
    applied?;
    let p = run_pairs(
        pairs,
        warmup,
        || with_nodes.run(m, &t.runc, &t.root),
        || plain.run(m, &t.runc, &t.root),
    )?;
    rows.push(p.row(SHIM_FLOOR, m.backend.name()));
    Ok(rows)
}

/// Case labels of the engine-call rows of [`shim`].
pub const SHIM_ENGINE_CDI: &str =
    "shim, engine calls (create --pid-file, start, delete), hook_inject = cdi: create + destroy 1g.10gb (no hooks)";
pub const SHIM_ENGINE_ENV: &str =
    "shim, engine calls (create --pid-file, start, delete), hook_inject = env: create + destroy 1g.10gb (no hooks)";

/// Case labels of the rows of each engine call alone, with `hook_inject = "cdi"` (the same runs as
/// [`SHIM_ENGINE_CDI`]'s).
pub const SHIM_CALLS_CDI: [&str; 3] = [
    "shim, engine call create --pid-file alone, hook_inject = cdi: allocates 1g.10gb (no hooks)",
    "shim, engine call start alone, hook_inject = cdi: passed on to runc",
    "shim, engine call delete --force alone, hook_inject = cdi: releases the slice (no hooks)",
];

/// `<program> --root R create --bundle B --pid-file P ID`, `start ID`, `delete --force ID`, as
/// containerd's runc shim calls a runtime (`delete --force` also covers a `true` still running),
/// each timed.
fn engine_calls(
    m: &Machine,
    program: &Path,
    config: Option<&Path>,
    t: &RuncTarget,
    bundle: &Bundle,
) -> Result<[Duration; 3]> {
    let id = super::run_id();
    let pid_file = bundle.dir.join("init.pid");
    let call = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let mut c = m.command(program);
        if let Some(cfg) = config {
            c.env("MIGRUN_CONFIG", cfg);
        }
        c.arg("--root").arg(&t.root).args(args);
        // No pipes: the container's init inherits them and would hold them open until it starts.
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = c
            .status()
            .map_err(|e| failed(format!("cannot run {c:?}: {e}")))?;
        if !status.success() {
            return Err(failed(format!(
                "{c:?} failed with {status} (the runtime's and migrun's logs say why)"
            )));
        }
        Ok(())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let timed_call = |args: &[&std::ffi::OsStr]| -> Result<Duration> {
        let t0 = Instant::now();
        call(args)?;
        Ok(t0.elapsed())
    };
    Ok([
        timed_call(&[
            &os("create"),
            &os("--bundle"),
            bundle.dir.as_os_str(),
            &os("--pid-file"),
            pid_file.as_os_str(),
            &os(&id),
        ])?,
        timed_call(&[&os("start"), &os(&id)])?,
        timed_call(&[&os("delete"), &os("--force"), &os(&id)])?,
    ])
}

/// Case label of the floor row of [`shim`].
pub const SHIM_FLOOR: &str =
    "floor: runc run with a slice's CDI edits already in config.json (no migrun)";

/// The edits CDI applies for lease 7 on GI 1 / CI 0 of a simulated GPU 0, without the toolkit's.
fn slice_edits() -> Result<migrun::cdi::types::ContainerEdits> {
    let machine = migrun::gpu::sim::SimMachine::new(&"h100-80gb".parse().map_err(failed)?);
    let facts = migrun::gpu::sim::procfs::host_facts(&machine).map_err(failed)?;
    let slice = cdi::Slice {
        lease: 7,
        name: None,
        mig_uuid: "MIG-5c1fd3bf-0000-5000-8000-000000000000".into(),
        gpu_minor: 0,
        gi: 1,
        ci: 0,
    };
    let spec = cdi::build(&slice, &facts, None).map_err(failed)?;
    cdi::edits_for(&spec, "7").map_err(failed)
}

/// Case label of [`precreate`].
pub const PRECREATE_CDI: &str = "precreate hook, hook_inject = cdi vs env: allocate 1g.10gb";

/// `migrun hook precreate` of a config asking for `1g.10gb`, with `hook_inject = "cdi"` against the
/// same with `"env"`; the lease each run makes (held by this process, as podman's would be) is
/// released after it, outside the timing.
pub fn precreate(m: &Machine, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let config = serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["true"], "env": ["PATH=/bin"], "cwd": "/" },
        "root": { "path": "rootfs" },
        "annotations": { "migrun.profile": "1g.10gb" },
    }))
    .map_err(failed)?;
    let run = |inject: &str| -> Result<Duration> {
        let cfg = m.config(
            &format!("precreate-{inject}.toml"),
            &format!("hook_inject = \"{inject}\"\n"),
        )?;
        let mut c = m.migrun();
        c.env("MIGRUN_CONFIG", &cfg).args(["hook", "precreate"]);
        let (dt, out) = timed_with_stdin(&mut c, &config)?;
        let lease = lease_of_config(&out)?;
        if inject == "cdi" && !out.windows(13).any(|w| w == b"/dev/nvidia0\"") {
            return Err(failed(
                "precreate with hook_inject = cdi wrote no device node",
            ));
        }
        timed(m.migrun().args(["release", &lease]))?;
        Ok(dt)
    };
    let p = run_pairs(pairs, warmup, || run("cdi"), || run("env"))?;
    m.expect("after the precreate runs", 0, 0)?;
    Ok(vec![p.row(PRECREATE_CDI, m.backend.name())])
}

/// Runs `cmd` with `input` on stdin; its wall time and stdout. A non-zero exit is an error.
fn timed_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<(Duration, Vec<u8>)> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run {cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    let dt = t0.elapsed();
    if !out.status.success() {
        return Err(failed(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok((dt, out.stdout))
}

/// The lease id a hook wrote into a config (`MIGRUN_LEASE=N` in `process.env`).
fn lease_of_config(out: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(out).map_err(failed)?;
    v["process"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.strip_prefix("MIGRUN_LEASE="))
        .map(str::to_string)
        .next()
        .ok_or_else(|| failed("the precreate hook's config names no lease"))
}

/// Case labels of [`spec_write`].
pub const SPEC_WRITE: &str = "one lease spec: build + validate + atomic write, vs a lease record";
pub const SPEC_WRITE_TOOLKIT: &str =
    "one lease spec with the toolkit's edits: build + validate + atomic write, vs a lease record";

/// One lease spec built (the crate's validation included) and written atomically into a spec dir
/// under `work_dir` (tmpfs, as /run is), against the atomic write of a lease record there; without
/// and with the toolkit fixture's common edits. In this process, so no process start is counted.
pub fn spec_write(work_dir: &Path, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let tmp = tempfile::Builder::new()
        .prefix("migrun-overhead-cdi-")
        .tempdir_in(work_dir)
        .map_err(failed)?;
    let spec_dir = tmp.path().join("cdi");
    let record = tmp.path().join("lease.json");
    let machine = migrun::gpu::sim::SimMachine::new(&"h100-80gb".parse().map_err(failed)?);
    let facts = migrun::gpu::sim::procfs::host_facts(&machine).map_err(failed)?;
    let edits = toolkit::load(Path::new(TOOLKIT_FIXTURE))
        .map_err(|e| OverheadError::Input(format!("toolkit fixture {TOOLKIT_FIXTURE}: {e}")))?;
    // A lease record as the registry writes one (the same size, give or take a digit).
    let lease_json = serde_json::to_vec_pretty(&serde_json::json!({
        "id": 7, "holder": {"kind": "manual"}, "uid": 0, "gpu_index": 0,
        "gpu_uuid": "GPU-5c1fd3bf-0000-5000-8000-000000000000", "gi": 1, "ci": 0, "profile_id": 19,
        "profile": "1g.10gb", "placement": {"start": 0, "size": 1},
        "mig_uuid": "MIG-5c1fd3bf-0000-5000-8000-000000000000", "created": true, "keep": false,
        "state": "active", "created_at": 1, "updated_at": 1
    }))
    .map_err(failed)?;
    let mut lease = 0u64;
    let mut rows = Vec::new();
    for (toolkit, case) in [(None, SPEC_WRITE), (Some(&edits), SPEC_WRITE_TOOLKIT)] {
        let write_spec = || -> Result<Duration> {
            lease += 1;
            let slice = cdi::Slice {
                lease,
                name: Some("trainer".into()),
                mig_uuid: "MIG-5c1fd3bf-0000-5000-8000-000000000000".into(),
                gpu_minor: 0,
                gi: 1,
                ci: 0,
            };
            let t0 = Instant::now();
            let spec = cdi::build(&slice, &facts, toolkit).map_err(failed)?;
            store::write(&spec_dir, lease, &spec).map_err(failed)?;
            let dt = t0.elapsed();
            store::remove(&spec_dir, lease).map_err(failed)?;
            Ok(dt)
        };
        let write_record = || -> Result<Duration> {
            let t0 = Instant::now();
            migrun::statedir::write_atomic(&record, &lease_json, 0o600).map_err(failed)?;
            Ok(t0.elapsed())
        };
        let p = run_pairs(pairs, warmup, write_spec, write_record)?;
        rows.push(p.row(case, "sim facts"));
    }
    Ok(rows)
}

/// Where a spec's build goes, in this process: each step alone, median of `n` runs (µs). Not a
/// comparison: it says which step a slow spec write spends its time in.
pub fn steps(n: usize) -> Result<Vec<(String, f64)>> {
    let machine = migrun::gpu::sim::SimMachine::new(&"h100-80gb".parse().map_err(failed)?);
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut xs = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            f()?;
            xs.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(super::median(&xs))
    };
    let facts = migrun::gpu::sim::procfs::host_facts(&machine).map_err(failed)?;
    let edits = toolkit::load(Path::new(TOOLKIT_FIXTURE)).map_err(failed)?;
    let slice = cdi::Slice {
        lease: 7,
        name: None,
        mig_uuid: "MIG-5c1fd3bf-0000-5000-8000-000000000000".into(),
        gpu_minor: 0,
        gi: 1,
        ci: 0,
    };
    let spec = cdi::build(&slice, &facts, Some(&edits)).map_err(failed)?;
    let mut out = Vec::new();
    out.push((
        "host facts of a simulated machine (mig-minors of 32 GPUs generated and parsed)".into(),
        time(&mut || {
            migrun::gpu::sim::procfs::host_facts(&machine)
                .map(drop)
                .map_err(failed)
        })?,
    ));
    out.push((
        "the toolkit fixture's spec: read, parse, validate, keep the common edits".into(),
        time(&mut || {
            toolkit::load(Path::new(TOOLKIT_FIXTURE))
                .map(drop)
                .map_err(failed)
        })?,
    ));
    out.push((
        "build + validate the spec (with the toolkit's edits)".into(),
        time(&mut || {
            cdi::build(&slice, &facts, Some(&edits))
                .map(drop)
                .map_err(failed)
        })?,
    ));
    out.push((
        "the device's edits from a spec (validate + merge), as a hook reading it back does".into(),
        time(&mut || cdi::edits_for(&spec, "7").map(drop).map_err(failed))?,
    ));
    Ok(out)
}
