//! Handler for the launcher (`migrun [run] ... IMAGE [CMD...]`) and its hidden detached-container watcher (`__watch`):
//! check docker's options, allocate, run docker, release on every path; docker specifics live in `engine::docker`.
//!
//! Who holds the lease, and when:
//! - from allocation until docker writes the cidfile: this process (pid + start time), so a crash there is gc's;
//! - from then on: the container (`Holder::Container`, engine `docker|…`), so a `kill -9` of migrun never frees a
//!   slice that a running container still uses; gc frees it once `docker inspect` says the container is gone;
//! - for `-d`: the container, and a detached `migrun __watch` releases it when `docker wait` returns.

use super::{select_gpu, Ctx, InputError};
use crate::alloc::{self, AllocRequest, ReleaseOutcome, Want};
use crate::cli::{RequestArgs, RunArgs, WatchArgs};
use crate::engine::docker::{DockerCli, RunLine};
use crate::engine::{self, docker};
use crate::lease::{Holder, Lease};
use crate::placement::{self, Policy};
use crate::profile::ProfileSpec;
use crate::statedir::StateDir;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

/// How long a watcher keeps asking an unreachable docker daemon before it leaves the lease to gc.
const WATCH_GIVE_UP: Duration = Duration::from_secs(600);

/// `--min-mem` sizes: `20g`, `20gb`, `20GiB`, `20000m`, `20000MiB`; a bare number is refused (which unit?).
pub fn parse_mem_mib(given: &str) -> Result<u64, InputError> {
    let s = given.trim().to_ascii_lowercase();
    let bad = || {
        InputError::Other(format!(
            "bad --min-mem {given:?}: expected a size with a unit, e.g. 20g or 20000m"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = s[..split].parse().map_err(|_| bad())?;
    let mib = match &s[split..] {
        "g" | "gb" | "gib" => n.checked_mul(1024).ok_or_else(bad)?,
        "m" | "mb" | "mib" => n,
        _ => return Err(bad()),
    };
    if mib == 0 {
        return Err(bad());
    }
    Ok(mib)
}

/// What the request asks for.
pub fn want_of(r: &RequestArgs) -> Result<Want> {
    match (&r.profile, &r.min_mem) {
        (Some(p), _) => Ok(Want::Profile(ProfileSpec::from_str(p)?)),
        (None, Some(m)) => Ok(Want::MinMemMib(parse_mem_mib(m)?)),
        (None, None) => Err(InputError::Other(
            "the launcher needs --profile P (e.g. --profile 3g.40gb) or --min-mem SIZE before the docker options; see `migrun profiles`".into(),
        )
        .into()),
    }
}

/// `--wait[=S]` as the allocator takes it: none, forever (`--wait` / `--wait=0`), or up to S seconds.
pub fn wait_of(r: &RequestArgs) -> Option<Option<Duration>> {
    r.wait.map(|s| (s > 0).then(|| Duration::from_secs(s)))
}

/// This process as a lease holder: pid and its start time (clock ticks since boot, /proc/<pid>/stat field 22),
/// which tells a live migrun from a later process that reused the pid.
pub fn this_process() -> Holder {
    let pid = std::process::id();
    let start_time = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0);
    Holder::Process { pid, start_time }
}

fn say(ctx: &Ctx, msg: impl AsRef<str>) {
    if ctx.global.verbose > 0 {
        eprintln!("migrun: {}", msg.as_ref());
    }
}

/// The launcher.
pub fn run(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    // Everything that can be refused is refused before anything is allocated.
    let line = RunLine::parse(&a.docker_args)?;
    let cli = DockerCli::resolve(a.docker.as_deref().or(ctx.config.docker.as_deref()))?;
    let (mode, why) = match (a.inject, ctx.config.inject) {
        (Some(m), _) => (m, "chosen with --inject".to_string()),
        (None, Some(m)) => (m, "set by `inject` in the config".to_string()),
        (None, None) => {
            let d = docker::detect(&cli)?;
            (d.mode, format!("detected: {}", d.why))
        }
    };
    line.check(mode, &|p| std::fs::read_to_string(p))?;
    line.check_cidfile()?;
    for w in line.warnings() {
        eprintln!("migrun: warning: {w}");
    }
    let want = want_of(&a.request)?;
    say(
        ctx,
        format!(
            "device goes in with --inject {} ({why}); docker CLI {}{}",
            docker::mode_name(mode),
            cli.path.display(),
            cli.host
                .as_deref()
                .map(|h| format!(", DOCKER_HOST={h}"))
                .unwrap_or_default()
        ),
    );
    if a.dry_run {
        return dry_run(ctx, &a, &line, mode, &cli, &want);
    }

    crate::caller::require_root(
        "running a container on a MIG slice",
        ctx.global.simulate.is_some(),
    )?;
    let dir = ctx.state_dir()?;
    let req = AllocRequest {
        want,
        gpu: a.request.gpu.clone(),
        wait: wait_of(&a.request),
        keep: a.request.keep,
        holder: this_process(),
        uid: crate::caller::Caller::current().uid,
    };
    let lease = {
        let mut backend = ctx.backend()?;
        alloc::allocate(&mut *backend, &dir, &ctx.config, &req, &engine::probe())?
    };
    say(
        ctx,
        format!(
            "lease {}: {} on GPU {} ({}) at placement {}, {} ({})",
            lease.id,
            lease.profile,
            lease.gpu_index,
            lease.gpu_uuid,
            lease.placement,
            lease.mig_uuid,
            if lease.created {
                "created for this run"
            } else {
                "reused"
            }
        ),
    );
    run_with_lease(ctx, &cli, &line, mode, &lease, &dir)
}

/// Run docker for an allocated lease; every path ends released, or with the lease handed to the container.
fn run_with_lease(
    ctx: &Ctx,
    cli: &DockerCli,
    line: &RunLine,
    mode: crate::cli::InjectMode,
    lease: &Lease,
    dir: &StateDir,
) -> Result<i32> {
    let tmp = tempfile::Builder::new().prefix("migrun-cid").tempdir();
    let tmp = match tmp {
        Ok(t) => t,
        Err(e) => {
            release(ctx, dir, lease);
            return Err(e).context("creating a temp dir for docker's --cidfile");
        }
    };
    let mut ours: Vec<String> = Vec::new();
    let cidfile = match line.cidfile() {
        Some(user) => PathBuf::from(user),
        None => {
            let p = tmp.path().join("cid");
            ours.push("--cidfile".into());
            ours.push(p.display().to_string());
            p
        }
    };
    ours.extend(docker::label_args(
        &lease.id.to_string(),
        &lease.profile,
        &lease.mig_uuid,
    ));
    ours.extend(docker::inject_args(mode, &lease.mig_uuid));
    let argv = line.argv(&ours);
    say(
        ctx,
        format!("{} {}", cli.path.display(), docker::shell_line(&argv)),
    );

    let engine_tag = cli.engine_tag();
    let mut on_container = |id: &str| {
        let holder = Holder::Container {
            id: id.to_string(),
            engine: engine_tag.clone(),
            pid: None,
        };
        match alloc::set_holder(dir, lease.id, holder) {
            Ok(()) => say(ctx, format!("lease {} now held by container {id}", lease.id)),
            Err(e) => eprintln!(
                "migrun: warning: could not hand lease {} to container {id}: {e}; if migrun dies now, gc may free the slice while the container runs",
                lease.id
            ),
        }
    };
    let (finished, _signals) = match docker::run_supervised(cli, &argv, &cidfile, &mut on_container)
    {
        Ok(x) => x,
        Err(e) => {
            release(ctx, dir, lease);
            return Err(e.into());
        }
    };
    if !finished.forwarded.is_empty() {
        say(
            ctx,
            format!("forwarded signals {:?} to docker", finished.forwarded),
        );
    }
    let code = finished.code;
    let Some(id) = finished.container else {
        // docker failed before creating a container (bad image, bad option): nothing holds the slice.
        return Ok(after_release(code, release(ctx, dir, lease)));
    };
    match docker::container_alive(cli, &id) {
        Some(false) => Ok(after_release(code, release(ctx, dir, lease))),
        alive => {
            // Detached (or docker itself died): the container keeps the slice; a watcher frees it when it ends.
            if alive.is_none() {
                eprintln!(
                    "migrun: cannot ask docker whether container {id} still runs; lease {} stays with it (a watcher, or `migrun gc`, releases it once the container is gone)",
                    lease.id
                );
            } else if !line.detach() {
                eprintln!(
                    "migrun: docker exited ({code}) but container {id} still runs; lease {} stays with it until it stops",
                    lease.id
                );
            }
            match spawn_watcher(ctx, lease, &id, &engine_tag) {
                Ok(pid) => say(
                    ctx,
                    format!(
                        "watcher {pid} releases lease {} when container {id} exits",
                        lease.id
                    ),
                ),
                Err(e) => eprintln!(
                    "migrun: warning: cannot start the watcher for container {id}: {e:#}; run `migrun gc` after it exits to free lease {}",
                    lease.id
                ),
            }
            Ok(code)
        }
    }
}

/// Release a lease, reporting the outcome; `false` when the release failed (the lease stays for gc to retry).
fn release(ctx: &Ctx, dir: &StateDir, lease: &Lease) -> bool {
    let result = ctx.backend().and_then(|mut backend| {
        Ok(alloc::release(
            &mut *backend,
            dir,
            &ctx.config,
            &lease.id.to_string(),
            None,
        )?)
    });
    match result {
        Ok(outcome) => {
            say(ctx, describe(&outcome));
            true
        }
        Err(e) => {
            eprintln!(
                "migrun: releasing lease {} ({} {}) failed: {e:#}; `migrun gc` or `migrun release {}` retries",
                lease.id, lease.profile, lease.mig_uuid, lease.id
            );
            false
        }
    }
}

/// The exit code: docker's (the container's), unless a clean run could not release its slice.
fn after_release(code: i32, released: bool) -> i32 {
    if !released && code == 0 {
        crate::exit::FAILED
    } else {
        code
    }
}

fn describe(o: &ReleaseOutcome) -> String {
    match o {
        ReleaseOutcome::Destroyed { lease, mig_uuid } => {
            format!("lease {lease} released; instance {mig_uuid} destroyed")
        }
        ReleaseOutcome::Kept {
            lease,
            mig_uuid,
            why,
        } => format!("lease {lease} released; instance {mig_uuid} kept ({why})"),
        ReleaseOutcome::Draining { lease, mig_uuid } => format!(
            "lease {lease} released; instance {mig_uuid} is still busy, gc destroys it once idle"
        ),
        ReleaseOutcome::NoLease => "no lease to release".into(),
    }
}

/// Start `migrun __watch` in its own session, logging to the state dir's log file.
fn spawn_watcher(ctx: &Ctx, lease: &Lease, id: &str, engine_tag: &str) -> Result<u32> {
    let exe = std::env::current_exe().context("finding migrun's own binary")?;
    let mut c = Command::new(exe);
    if let Some(s) = &ctx.global.simulate {
        c.arg("--simulate").arg(s);
    }
    c.arg("--state-dir").arg(ctx.state_dir_path());
    if let Some(cfg) = &ctx.global.config {
        c.arg("--config").arg(cfg);
    }
    c.args([
        "__watch",
        "--lease",
        &lease.id.to_string(),
        "--container",
        id,
        "--engine",
        engine_tag,
    ]);
    let log = log_path(ctx);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting `migrun __watch`")?;
    Ok(child.id())
}

/// Where the watcher writes (it has no terminal): the configured log file, else `<state-dir>/migrun.log`.
fn log_path(ctx: &Ctx) -> PathBuf {
    match &ctx.config.log {
        crate::config::LogTarget::Path(p) => p.clone(),
        _ => ctx.state_dir_path().join("migrun.log"),
    }
}

/// `migrun __watch`: wait for a detached container to be gone for good, then release its lease.
pub fn watch(ctx: &Ctx, a: &WatchArgs) -> Result<i32> {
    // Leave the launcher's session, so a closing terminal cannot take the watcher with it. It fails only for a
    // process-group leader, which a watcher started by the launcher is not.
    let _ = nix::unistd::setsid();
    let cli = DockerCli::from_engine_tag(&a.engine).ok_or_else(|| {
        InputError::Other(format!(
            "__watch --engine {:?} does not name a docker endpoint",
            a.engine
        ))
    })?;
    let dir = ctx.state_dir()?;
    let tag = format!(
        "migrun __watch: lease {} container {}",
        a.lease, a.container
    );
    match docker::wait_gone(&cli, &a.container, WATCH_GIVE_UP) {
        None => {
            eprintln!(
                "{tag}: docker did not answer for {}s; leaving the lease to `migrun gc`",
                WATCH_GIVE_UP.as_secs()
            );
            Ok(crate::exit::FAILED)
        }
        Some(code) => {
            let mut backend = ctx.backend()?;
            let outcome = alloc::release_container(&mut *backend, &dir, &ctx.config, &a.container)
                .with_context(|| format!("{tag}: release"))?;
            eprintln!(
                "{tag}: container exited{}; {}",
                code.map(|c| format!(" with {c}")).unwrap_or_default(),
                describe(&outcome)
            );
            Ok(0)
        }
    }
}

/// `--dry-run`: what would be allocated and the exact docker command; changes nothing.
fn dry_run(
    ctx: &Ctx,
    a: &RunArgs,
    line: &RunLine,
    mode: crate::cli::InjectMode,
    cli: &DockerCli,
    want: &Want,
) -> Result<i32> {
    let mut backend = ctx.backend()?;
    let state = backend.snapshot()?;
    let infos: Vec<_> = state.gpus.iter().map(|g| g.info.clone()).collect();
    let only: Option<Vec<u32>> = match &a.request.gpu {
        Some(g) => Some(vec![select_gpu(g, &infos)?]),
        None => None,
    };
    let spec = match want {
        Want::Profile(p) => *p,
        Want::MinMemMib(mib) => smallest_plain_profile(&state, *mib).ok_or_else(|| {
            InputError::Other(format!(
                "no plain MIG profile has at least {mib} MiB on this machine; see `migrun profiles`"
            ))
        })?,
    };
    for g in &state.gpus {
        if only.as_ref().map_or(true, |o| o.contains(&g.info.index)) && g.info.mig.is_some() {
            // Resolve once, so an unknown profile is the same clear error as in a real run.
            crate::profile::resolve(&spec, &g.profiles, &g.info.label(), &g.info.name)?;
            break;
        }
    }
    let choice = placement::choose(&state, &spec, only.as_deref(), Policy::Migrun);
    let (plan, uuid) = match choice {
        Some(c) => {
            let g = state
                .gpu(c.gpu)
                .expect("choice names a GPU of the snapshot");
            let name = g
                .profile_by_id(c.profile_id)
                .map_or(spec.to_string(), |p| p.short_name().to_string());
            (
                format!(
                    "create {name} (profile ID {}) on {} at placement {}{}",
                    c.profile_id,
                    g.info.label(),
                    c.placement,
                    if a.request.keep {
                        ", kept after the container ends (--keep)"
                    } else {
                        ", destroyed after the container ends"
                    }
                ),
                "<MIG-uuid-of-the-new-instance>".to_string(),
            )
        }
        None => {
            let wait = match wait_of(&a.request) {
                None => {
                    println!("plan: no room for {spec} now; a real run fails with exit code 3 (add --wait to queue)");
                    return Ok(crate::exit::NO_ROOM);
                }
                Some(None) => "wait until".to_string(),
                Some(Some(d)) => format!("wait up to {}s until", d.as_secs()),
            };
            (
                format!("no room for {spec} now; a real run would {wait} one frees up"),
                "<MIG-uuid>".to_string(),
            )
        }
    };
    let mut ours = Vec::new();
    if line.cidfile().is_none() {
        ours.push("--cidfile".to_string());
        ours.push("<temp-dir>/cid".to_string());
    }
    ours.extend(docker::label_args("<lease-id>", &spec.to_string(), &uuid));
    ours.extend(docker::inject_args(mode, &uuid));
    let argv = line.argv(&ours);
    println!("plan: {plan}");
    println!(
        "inject: {} (--inject {})",
        match mode {
            crate::cli::InjectMode::Gpus => "docker --gpus device=<MIG-uuid>",
            crate::cli::InjectMode::NvidiaRuntime =>
                "the nvidia runtime with NVIDIA_VISIBLE_DEVICES=<MIG-uuid>",
            crate::cli::InjectMode::Cdi => "the CDI device nvidia.com/gpu=<MIG-uuid>",
            crate::cli::InjectMode::Env => "NVIDIA_VISIBLE_DEVICES=<MIG-uuid> only",
        },
        docker::mode_name(mode)
    );
    println!(
        "release: {}",
        if line.detach() {
            "a detached watcher (migrun __watch) releases the slice when the container exits"
        } else {
            "when the container exits, before migrun exits with its code"
        }
    );
    println!(
        "command: {} {}",
        docker::shell_quote(&cli.path.display().to_string()),
        docker::shell_line(&argv)
    );
    Ok(0)
}

/// Smallest plain profile with at least `mib` MiB on any MIG-capable GPU (for `--min-mem` in a dry run).
fn smallest_plain_profile(state: &crate::gpu::MigState, mib: u64) -> Option<ProfileSpec> {
    state
        .gpus
        .iter()
        .flat_map(|g| g.profiles.iter())
        .filter(|p| p.memory_mib >= mib)
        .filter_map(|p| {
            let n = p.parsed_name()?;
            (n.variant == crate::profile::Variant::Plain).then_some((p.memory_mib, n))
        })
        .min()
        .map(|(_, n)| ProfileSpec::Name(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem_mib("20g").unwrap(), 20480);
        assert_eq!(parse_mem_mib("20GiB").unwrap(), 20480);
        assert_eq!(parse_mem_mib("20000m").unwrap(), 20000);
        for bad in ["20", "g", "", "0g", "20tb", "-1g", "1.5g"] {
            assert!(parse_mem_mib(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wait_forms() {
        let r = |w| RequestArgs {
            wait: w,
            ..Default::default()
        };
        assert_eq!(wait_of(&r(None)), None);
        assert_eq!(wait_of(&r(Some(0))), Some(None));
        assert_eq!(wait_of(&r(Some(5))), Some(Some(Duration::from_secs(5))));
    }

    #[test]
    fn this_process_has_a_start_time() {
        match this_process() {
            Holder::Process { pid, start_time } => {
                assert_eq!(pid, std::process::id());
                assert!(start_time > 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_needs_a_profile_or_a_size() {
        let e = want_of(&RequestArgs::default()).unwrap_err().to_string();
        assert!(e.contains("--profile"), "{e}");
        assert!(want_of(&RequestArgs {
            profile: Some("3g.40gb".into()),
            ..Default::default()
        })
        .is_ok());
    }
}
