//! Handler for the launcher (`migrun [run] ... IMAGE [CMD...]`) and its hidden detached-container watcher (`__watch`):
//! check docker's options, allocate, run docker, release on every path; docker specifics live in `engine::docker`.
//!
//! Who holds the lease, and when:
//! - from allocation until docker writes the cidfile: the launcher (`Holder::Launcher`): this process, then also the
//!   docker client, whose pid is recorded before it may reach the daemon (it waits behind `engine::docker`'s gate),
//!   and the `migrun.launch` label it puts on the container. A `kill -9` of migrun in that window (a slow pull) leaves
//!   the lease alive while the client runs or a container with that label lives; gc frees it after that;
//! - from then on: the container (`Holder::Container`, engine `docker|…`), so a `kill -9` of migrun never frees a
//!   slice that a running container still uses; gc frees it once `docker inspect` says the container is gone;
//! - for `-d`: the container, and a detached `migrun __watch` releases it when `docker wait` returns.

use super::alloc::{wait_of, want_of};
use super::{Ctx, InputError};
use crate::alloc::{self, AllocError, AllocRequest};
use crate::cli::{InjectMode, RunArgs, WatchArgs};
use crate::engine::docker;
use crate::engine::docker::{DockerCli, RunLine};
use crate::engine::docker_api::DaemonLink;
use crate::lease::{Holder, Lease, LeaseError};
use crate::policy::plan::{self, Plan, Want};
use crate::statedir::StateDir;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a watcher keeps asking an unreachable docker daemon before it leaves the lease to gc.
const WATCH_GIVE_UP: Duration = Duration::from_secs(600);

fn say(ctx: &Ctx, msg: impl AsRef<str>) {
    if ctx.global.verbose > 0 {
        crate::errln!("migrun: {}", msg.as_ref());
    }
}

/// The launcher.
pub fn run(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    // Everything that can be refused is refused before anything is allocated.
    let line = RunLine::parse(&a.docker_args)?;
    if a.dry_run {
        return dry_run(ctx, &a, &line);
    }
    let cli = DockerCli::resolve(a.docker.as_deref().or(ctx.config.docker.as_deref()))?;
    if crate::caller::Caller::current().via_sudo {
        // Under sudo the CLI came from PATH, which sudoers may have let the user choose.
        crate::caller::trusted_program(&cli.path).map_err(|why| {
            crate::caller::PrivilegeError::NotDelegated {
                what: format!("the docker CLI {}", cli.path.display()),
                uid: crate::caller::Caller::current().uid,
                why: format!("root would run it, and {why}"),
            }
        })?;
    }
    let (mode, why) = injection(ctx, &a, &cli)?;
    // Env files are read here, once; docker gets the checked bytes (Checked::hand_over), never the files again.
    let checked = line.check(mode, &|c| docker::bind_sources(&cli, c))?;
    line.check_cidfile()?;
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

    crate::caller::require_root(
        "running a container on a MIG slice",
        ctx.global.simulate.is_some(),
    )?;
    let dir = ctx.state_dir()?;
    // Made before allocating, so a failure here leaves nothing to release. Root's and 0700: docker's cidfile and the
    // checked copies of the env files (which docker reads instead of the user's files) live here while docker runs.
    let tmp = tempfile::Builder::new()
        .prefix("migrun-run")
        .tempdir()
        .context("creating a temp dir for docker's --cidfile and env files")?;
    let line = checked.hand_over(&line, tmp.path())?;
    let me = std::process::id();
    let start_time =
        crate::lease::process_start_time(me).ok_or(LeaseError::NoSuchProcess { pid: me })?;
    let launcher = Launcher {
        pid: me,
        start_time,
        engine: cli.engine_tag(),
        launch: launch_id(me, start_time),
        mode,
    };
    let req = AllocRequest {
        want,
        gpu: a.request.gpu.clone(),
        wait: wait_of(&a.request),
        keep: a.request.keep,
        holder: launcher.holder(None),
        uid: alloc::caller_uid(),
        name: None,
    };
    let lease = ctx.session_in(dir.clone())?.allocate(&req)?;
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
    run_with_lease(ctx, &cli, &line, tmp.path(), &launcher, &lease, &dir)
}

/// This launch: what the lease records about it before the container has an id, and how the device goes in.
struct Launcher {
    pid: u32,
    start_time: u64,
    engine: String,
    /// The `migrun.launch` label's value.
    launch: String,
    mode: crate::cli::InjectMode,
}

impl Launcher {
    /// The lease holder, with the docker client (pid, start time) once it exists.
    fn holder(&self, client: Option<(u32, u64)>) -> Holder {
        Holder::Launcher {
            pid: self.pid,
            start_time: self.start_time,
            client,
            engine: self.engine.clone(),
            launch: self.launch.clone(),
        }
    }
}

/// A label value no other launch shares: 128 random bits, or (without /dev/urandom) this process's pid, start time and
/// the clock, which no other launch on this host shares either.
fn launch_id(pid: u32, start_time: u64) -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    match random {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{pid}-{start_time}-{nanos}")
        }
    }
}

/// How the device reaches the container, and why: `--inject`, the config, or what detection found.
fn injection(ctx: &Ctx, a: &RunArgs, cli: &DockerCli) -> Result<(InjectMode, String)> {
    Ok(match (a.inject, ctx.config.inject) {
        (Some(m), _) => (m, "chosen with --inject".to_string()),
        (None, Some(m)) => (m, "set by `inject` in the config".to_string()),
        (None, None) => {
            let d = docker::detect(cli, &ctx.cdi_dir()?)?;
            (d.mode, format!("detected: {}", d.why))
        }
    })
}

/// Run docker for an allocated lease; every path ends released, or with the lease handed to the container.
/// `tmp` is the launch's private temp dir (docker's cidfile goes there).
fn run_with_lease(
    ctx: &Ctx,
    cli: &DockerCli,
    line: &RunLine,
    tmp: &Path,
    launcher: &Launcher,
    lease: &Lease,
    dir: &StateDir,
) -> Result<i32> {
    let mut ours: Vec<String> = Vec::new();
    let cidfile = match line.cidfile() {
        Some(user) => PathBuf::from(user),
        None => {
            let p = tmp.join("cid");
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
    ours.extend(docker::launch_label_args(&launcher.launch));
    ours.extend(docker::inject_args(
        launcher.mode,
        &lease.id.to_string(),
        &lease.mig_uuid,
    ));
    let argv = line.argv(&ours);
    say(
        ctx,
        format!("{} {}", cli.path.display(), docker::shell_line(&argv)),
    );

    let engine_tag = cli.engine_tag();
    // The daemon's socket answers "is it still running?" after docker exits in ~1 ms instead of a 20+ ms
    // `docker inspect`, but only once it has shown that it holds this container (engine::docker_api).
    let mut link = DaemonLink::new(cli.host.as_deref());
    let mut on_container = |id: &str| {
        let holder = Holder::Container {
            id: id.to_string(),
            engine: engine_tag.clone(),
            pid: None,
        };
        match alloc::set_holder(dir, lease.id, holder) {
            Ok(()) => say(ctx, format!("lease {} now held by container {id}", lease.id)),
            Err(e) => crate::errln!(
                "migrun: warning: could not hand lease {} to container {id}: {e}; if migrun dies now, gc may free the slice while the container runs",
                lease.id
            ),
        }
        if link.confirm(id) {
            say(ctx, format!("docker's API socket knows container {id}"));
        }
    };
    // The docker client joins the lease's holder before it may reach the daemon: should migrun die before the
    // cidfile appears, gc still sees a holder (the client, then the labelled container) and keeps the slice.
    let mut on_spawn = |pid: u32| -> Result<(), String> {
        let start = crate::lease::process_start_time(pid)
            .ok_or_else(|| format!("docker's process {pid} is gone already"))?;
        alloc::set_holder(dir, lease.id, launcher.holder(Some((pid, start))))
            .map_err(|e| e.to_string())?;
        say(
            ctx,
            format!("lease {} also held by docker client pid {pid}", lease.id),
        );
        Ok(())
    };
    let supervised = docker::run_supervised(cli, &argv, &cidfile, &mut on_spawn, &mut on_container);
    let (finished, _signals) = match supervised {
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
    if let Some(why) = &finished.unheld {
        say(
            ctx,
            format!(
                "docker ran without being recorded in lease {}: {why}",
                lease.id
            ),
        );
    }
    let code = finished.code;
    let Some(id) = finished.container else {
        // docker failed before creating a container (bad image, bad option): nothing holds the slice.
        return Ok(after_release(code, release(ctx, dir, lease)));
    };
    let alive = link
        .alive(&id, docker::state_alive)
        .or_else(|| docker::container_alive(cli, &id));
    match alive {
        Some(false) => Ok(after_release(code, release(ctx, dir, lease))),
        alive => {
            // Detached (or docker itself died): the container keeps the slice; a watcher frees it when it ends.
            if alive.is_none() {
                crate::errln!(
                    "migrun: cannot ask docker whether container {id} still runs; lease {} stays with it (a watcher, or `migrun gc`, releases it once the container is gone)",
                    lease.id
                );
            } else if !line.detach() {
                crate::errln!(
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
                Err(e) => crate::errln!(
                    "migrun: warning: cannot start the watcher for container {id}: {e:#}; run `migrun gc` after it exits to free lease {}",
                    lease.id
                ),
            }
            Ok(code)
        }
    }
}

/// Release a lease, reporting the outcome; `false` when the release failed (the lease stays for gc to retry).
/// A destroy is left to a detached worker, so the launcher exits without waiting for the driver (issue 23).
fn release(ctx: &Ctx, dir: &StateDir, lease: &Lease) -> bool {
    let result = ctx
        .session_in(dir.clone())
        .and_then(|mut s| Ok(s.release_detached(lease.id)?));
    match result {
        Ok(outcome) => {
            say(ctx, outcome.to_string());
            true
        }
        Err(e) => {
            crate::errln!(
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

/// Start `migrun __watch` in its own session, logging to the state dir's log file.
fn spawn_watcher(ctx: &Ctx, lease: &Lease, id: &str, engine_tag: &str) -> Result<u32> {
    let exe = std::env::current_exe().context("finding migrun's own binary")?;
    let mut c = Command::new(exe);
    if let Some(s) = &ctx.global.simulate {
        c.arg("--simulate").arg(s);
    }
    c.arg("--state-dir").arg(ctx.state_dir_path()?);
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
    Ok(spawn_detached(ctx, &mut c, "migrun __watch")?.id())
}

/// Start a detached migrun helper (`__watch`, `__finish-release`) with no stdin or stdout and its stderr
/// appended to migrun's log, opened as every log file is ([`crate::engine::runtime::open_log_file`]:
/// no symlink followed, created 0600); `/dev/null` when the log cannot be opened.
pub(crate) fn spawn_detached(
    ctx: &Ctx,
    c: &mut Command,
    what: &str,
) -> Result<std::process::Child> {
    let stderr = crate::engine::runtime::open_log_file(&log_path(ctx))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    // Its own process group from the start: a terminal's Ctrl-C or hangup, sent to the caller's foreground group as
    // the caller returns, must not reach it before its own setsid() has run.
    use std::os::unix::process::CommandExt as _;
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `{what}`"))
}

/// Where the watcher writes (it has no terminal): the configured log file, else `<state-dir>/migrun.log`.
pub(crate) fn log_path(ctx: &Ctx) -> PathBuf {
    super::hook::log_path(ctx)
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
            crate::errln!(
                "{tag}: docker did not answer for {}s; leaving the lease to `migrun gc`",
                WATCH_GIVE_UP.as_secs()
            );
            Ok(crate::exit::FAILED)
        }
        Some(code) => {
            let outcome = ctx
                .session_in(dir)?
                .release_container(&a.container)
                .with_context(|| format!("{tag}: release"))?;
            crate::errln!(
                "{tag}: container exited{}; {}",
                code.map(|c| format!(" with {c}")).unwrap_or_default(),
                outcome
            );
            Ok(0)
        }
    }
}

/// `--dry-run`: what would be allocated and the exact docker command; changes nothing (the allocator's pure planner
/// on a snapshot and the recorded leases; no lock, no lease, no instance, no container).
fn dry_run(ctx: &Ctx, a: &RunArgs, line: &RunLine) -> Result<i32> {
    // A missing docker CLI or toolkit does not hide the plan: it is reported with it, and the
    // exit status is what a real run would give.
    let cli = DockerCli::resolve(a.docker.as_deref().or(ctx.config.docker.as_deref()));
    let injection = match &cli {
        Ok(c) => injection(ctx, a, c),
        Err(e) => Err(docker::DockerError::NoCli(e.to_string()).into()),
    };
    // Without a mode, check what every mode refuses (the env-only mode adds no exception).
    let check_mode = injection.as_ref().map_or(InjectMode::Env, |(m, _)| *m);
    let binds_of = |c: &str| match &cli {
        Ok(docker) => docker::bind_sources(docker, c),
        Err(e) => Err(e.to_string()),
    };
    // Checked as a real run checks (env files are read once here too), but nothing is handed over.
    line.check(check_mode, &binds_of)?;
    line.check_cidfile()?;
    let want = want_of(&a.request)?;
    // Read-only: nothing is created, not even the state dir.
    let dir = ctx.existing_state_dir()?;
    let mut backend = ctx.read_backend()?;
    let state = backend.snapshot()?;
    let (leases, created) = match &dir {
        Some(d) => (alloc::leases(d)?, alloc::created_instances(d)?),
        None => (Vec::new(), Vec::new()),
    };
    let mut req = AllocRequest::new(want);
    req.gpu = a.request.gpu.clone();
    let mut preq = alloc::plan_request(&state, &ctx.config, &req, &created, &leases)?;
    // A compute instance goes into a sharing GPU instance with room, as a real run would plan it.
    if matches!(preq.want, Want::Ci(_)) {
        preq.ci.shared = alloc::shared_gis(&mut *backend, &state, &created, &leases)?;
    }
    let keep = if a.request.keep {
        "kept after the container ends (--keep)"
    } else {
        "destroyed after the container ends"
    };
    let (plan, uuid, profile) = match plan::plan(&state, &leases, &preq) {
        Ok(Plan::Reuse {
            gpu,
            gi,
            mig_uuid,
            profile,
            placement,
            ..
        }) => (
            format!(
                "reuse the free {profile} instance GI {gi} at placement {placement} on {} ({mig_uuid}), kept after the container ends",
                gpu_label(&state, gpu)
            ),
            mig_uuid,
            profile,
        ),
        Ok(Plan::Create(c)) => {
            let profile = state
                .gpu(c.gpu)
                .and_then(|g| g.profile_by_id(c.profile_id))
                .map_or(c.profile_id.to_string(), |p| p.short_name().to_string());
            (
                format!(
                    "create {profile} (profile ID {}) on {} at placement {}, {keep}",
                    c.profile_id,
                    gpu_label(&state, c.gpu),
                    c.placement
                ),
                "<MIG-uuid-of-the-new-instance>".to_string(),
                profile,
            )
        }
        Ok(Plan::IntoShared { gpu, gi, ci, .. }) => (
            format!(
                "create a {ci} compute instance in migrun's sharing GPU instance GI {gi} on {}, destroyed after the container ends",
                gpu_label(&state, gpu)
            ),
            "<MIG-uuid-of-the-new-compute-instance>".to_string(),
            ci.to_string(),
        ),
        Ok(Plan::NewShared { choice: c, ci }) => (
            format!(
                "create a sharing {} GPU instance on {} at placement {} and a {ci} compute instance in it, destroyed after the container ends",
                ci.gi,
                gpu_label(&state, c.gpu),
                c.placement
            ),
            "<MIG-uuid-of-the-new-compute-instance>".to_string(),
            ci.to_string(),
        ),
        Err(nr) if !nr.can_wait() => {
            // Never satisfiable as asked: the same error a real run gives (a profile error names the valid ones).
            if let Want::Profile(spec) = &preq.want {
                for g in state.gpus.iter().filter(|g| g.info.mig.is_some()) {
                    crate::gpu::names::resolve(spec, &g.profiles, &g.info.label(), &g.info.name)?;
                }
            }
            return Err(AllocError::Unsatisfiable(Box::new(nr)).into());
        }
        Err(nr) => match wait_of(&a.request) {
            None => {
                crate::outln!("plan: {nr}");
                crate::outln!("(a real run fails with exit code 3; --wait[=S] queues for room)");
                return Ok(crate::exit::NO_ROOM);
            }
            Some(w) => (
                format!(
                    "{nr}; a real run would wait {} for room (first come, first served)",
                    w.map_or("as long as it takes".to_string(), |d| format!(
                        "up to {}s",
                        d.as_secs()
                    ))
                ),
                "<MIG-uuid>".to_string(),
                match &preq.want {
                    Want::Profile(p) => p.to_string(),
                    Want::MinMemMib(m) => format!("{m}MiB"),
                    Want::Ci(c) => c.to_string(),
                },
            ),
        },
    };
    let mut ours = Vec::new();
    if line.cidfile().is_none() {
        ours.push("--cidfile".to_string());
        ours.push("<temp-dir>/cid".to_string());
    }
    ours.extend(docker::label_args("<lease-id>", &profile, &uuid));
    ours.extend(docker::launch_label_args("<launch-id>"));
    if let Ok((mode, _)) = &injection {
        ours.extend(docker::inject_args(*mode, "<lease-id>", &uuid));
    }
    let argv = line.argv(&ours);
    if let (Ok((mode, why)), Ok(c)) = (&injection, &cli) {
        say(
            ctx,
            format!(
                "device goes in with --inject {} ({why}); docker CLI {}",
                docker::mode_name(*mode),
                c.path.display()
            ),
        );
    }
    crate::outln!("plan: {plan}");
    match &injection {
        Ok((mode, why)) => crate::outln!(
            "inject: {} (--inject {}, {why})",
            match mode {
                InjectMode::Gpus => "docker --gpus device=<MIG-uuid>",
                InjectMode::NvidiaRuntime =>
                    "the nvidia runtime with NVIDIA_VISIBLE_DEVICES=<MIG-uuid>",
                InjectMode::Cdi => "migrun's CDI device migrun.io/mig=<lease-id>",
                InjectMode::Env => "NVIDIA_VISIBLE_DEVICES=<MIG-uuid> only",
            },
            docker::mode_name(*mode)
        ),
        Err(e) => crate::outln!("inject: none found; a real run stops here: {e}"),
    }
    crate::outln!(
        "release: {}",
        if line.detach() {
            "a detached watcher (migrun __watch) releases the slice when the container exits"
        } else {
            "when the container exits, before migrun exits with its code"
        }
    );
    let docker_path = match &cli {
        Ok(c) => docker::shell_quote(&c.path.display().to_string()),
        Err(_) => "docker".to_string(),
    };
    crate::outln!("command: {docker_path} {}", docker::shell_line(&argv));
    match injection {
        Ok(_) => Ok(0),
        Err(e) => Ok(super::exit_code_for(&e)),
    }
}

fn gpu_label(state: &crate::gpu::MigState, gpu: u32) -> String {
    state
        .gpu(gpu)
        .map_or(format!("GPU {gpu}"), |g| g.info.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_release_never_looks_like_success() {
        assert_eq!(after_release(0, true), 0);
        assert_eq!(after_release(7, true), 7);
        assert_eq!(after_release(0, false), crate::exit::FAILED);
        // The container's own failure stays visible.
        assert_eq!(after_release(125, false), 125);
    }
}
