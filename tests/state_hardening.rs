//! Attacks on and faults of the state dir, each performed for real: planted and crafted records, FIFOs and huge
//! files, open sub-directories, a symlink given with a trailing slash, a full file system mid-operation, an
//! interrupted allocation next to an admin's instance, an unprintable allocation, and state dirs used with the
//! wrong machine or twice on the same GPUs (through the fake libnvidia-ml.so). Needs root, no GPU.

mod alloc_support;
mod common;

use alloc_support::{instances, leases, Sim};
use common::fake_nvml::FakeNvml;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run `cmd`, killing it (and failing the test) if it takes longer than `limit`: a hang is the bug.
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "migrun hung for more than {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An intent naming `gpu_uuid` and GI `gi`, as a crashed allocation of lease `lease` would have left it.
fn intent_json(lease: u64, gpu_uuid: &str, gi: Option<u32>, start: u32, size: u32) -> String {
    serde_json::json!({
        "lease": lease, "gpu_index": 0, "gpu_uuid": gpu_uuid, "profile_id": 9, "profile": "3g.40gb",
        "placement": {"start": start, "size": size}, "gi": gi, "pid": 1, "created_at": 1
    })
    .to_string()
}

fn gpu0_uuid(sim: &Sim) -> String {
    sim.status()["gpus"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- (11) record fields as paths, sub-directories, trailing slash ----

#[test]
fn a_path_in_a_record_field_is_skipped_and_never_used() {
    let sim = Sim::new("h100-80gb");
    sim.ok(&["gc"]);
    // The file root's gc would have removed: created/<gpu_uuid>-<gi>.json with a gpu_uuid that climbs out.
    let victim_dir = sim.tmp.path().join("victim");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("db-1.json"), "precious").unwrap();
    let intents = sim.state_dir().join("intents");
    std::fs::write(
        intents.join("5.json"),
        intent_json(5, "../../victim/db", Some(1), 0, 4),
    )
    .unwrap();
    chmod(&intents.join("5.json"), 0o600);
    let out = sim.run(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(victim_dir.join("db-1.json")).unwrap(),
        "precious"
    );
    let said = stdout(&out);
    assert!(
        said.contains("intents/5.json is not a record migrun wrote")
            && said.contains("is not a GPU UUID"),
        "{said}"
    );
    // Skipped, not used: allocation goes on around it.
    sim.alloc(&["--profile", "1g.10gb"]);
}

#[test]
fn an_open_intents_dir_is_refused_so_a_planted_intent_never_destroys() {
    let sim = Sim::new("h100-80gb");
    sim.ok(&["gc"]);
    // An admin's instance, and an intent (with its GI id) claiming it, planted by uid 65534 through a 0777
    // intents/ inside a 0711 state dir.
    let (gi, uuid) = sim.create_foreign(0, 9);
    chmod(&sim.state_dir(), 0o711);
    let intents = sim.state_dir().join("intents");
    chmod(&intents, 0o777);
    let planted = intents.join("9.json");
    let gpu = gpu0_uuid(&sim);
    let start = sim.status()["gpus"][0]["instances"][0]["placement"]["start"]
        .as_u64()
        .unwrap() as u32;
    std::fs::write(&planted, intent_json(9, &gpu, Some(gi), start, 4)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let out = sim.run(&["gc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("state sub-directory")
            && stderr(&out).contains("intents is writable by group or others (mode 777)"),
        "{}",
        stderr(&out)
    );
    assert!(instances(&sim.status())
        .iter()
        .any(|(_, _, u)| u.as_deref() == Some(&*uuid)));
    // Closed again, the intent someone else wrote is still not believed.
    chmod(&intents, 0o700);
    let out = sim.run(&["gc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    assert!(instances(&sim.status())
        .iter()
        .any(|(_, _, u)| u.as_deref() == Some(&*uuid)));
}

#[test]
fn a_trailing_slash_does_not_let_a_symlinked_state_dir_through() {
    let sim = Sim::new("h100-80gb");
    let real = sim.tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    let link = sim.tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for given in ["link/", "link/.", "link//"] {
        let out = sim
            .cmd(&["alloc", "--profile", "1g.10gb"])
            .env("MIGRUN_STATE_DIR", sim.tmp.path().join(given))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{given}: {}", stderr(&out));
        assert!(stderr(&out).contains("is a symlink"), "{}", stderr(&out));
    }
    assert!(std::fs::read_dir(&real).unwrap().next().is_none());
}

// ---- (12) FIFOs and huge files ----

#[test]
fn a_fifo_in_place_of_a_record_is_refused_without_hanging() {
    let sim = Sim::new("h100-80gb");
    let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
    let p = sim.state_dir().join(format!("leases/{id}.json"));
    std::fs::remove_file(&p).unwrap();
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for args in [
        vec!["gc"],
        vec!["release", "1"],
        vec!["alloc", "--profile", "1g.10gb"],
    ] {
        let out = run_within(sim.cmd(&args), Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is a symlink or not a regular file"),
            "{}",
            stderr(&out)
        );
    }
    // The lock is not held by anyone afterwards: once the FIFO is gone, migrun works.
    std::fs::remove_file(&p).unwrap();
    run_within(sim.cmd(&["gc"]), Duration::from_secs(20));
    sim.alloc(&["--profile", "1g.10gb"]);
}

#[test]
fn a_huge_record_is_refused_without_reading_it() {
    let sim = Sim::new("h100-80gb");
    let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
    let p = sim.state_dir().join(format!("leases/{id}.json"));
    // 1 GiB, sparse: reading it whole would cost a gigabyte of memory.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let out = run_within(sim.cmd(&["gc"]), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is larger than the 1048576 bytes migrun reads"),
        "{}",
        stderr(&out)
    );
}

// ---- (14) a full or read-only file system ----

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "this test needs to mount a tmpfs (root with CAP_SYS_ADMIN)"
        );
        Tmpfs(at.to_path_buf())
    }
    fn remount(&self, opt: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_dir_mid_operation_fails_the_operation_and_names_the_file() {
    let sim = Sim::new("h100-80gb");
    let fs = Tmpfs::mount(&sim.state_dir(), "256k");
    sim.ok(&["gc"]);
    // Fill it: the state dir opens and passes its checks, the first write fails.
    let _ = std::fs::write(sim.state_dir().join("filler"), vec![0u8; 1 << 20]);
    let out = sim.run(&["alloc", "--profile", "1g.10gb"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed: No space left on device (os error 28)")
            && err.contains(&sim.state_dir().display().to_string()),
        "{err}"
    );
    assert!(!err.contains("choose a writable --state-dir"), "{err}");
    std::fs::remove_file(sim.state_dir().join("filler")).unwrap();
    sim.alloc(&["--profile", "1g.10gb"]);

    // Read-only when migrun starts: that is the state dir being unusable (exit 2), as before.
    fs.remount("ro");
    let out = sim.run(&["alloc", "--profile", "1g.10gb"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("choose a writable --state-dir"),
        "{}",
        stderr(&out)
    );
}

// ---- (4) an intent never licenses destroying someone else's instance ----

#[test]
fn an_intent_without_a_gi_never_destroys_an_instance_made_at_its_place() {
    let sim = Sim::new("h100-80gb");
    sim.ok(&["gc"]);
    alloc_support::scenarios::crash(&sim, "after-intent", &["alloc", "--profile", "3g.40gb"]);
    let intent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sim.state_dir().join("intents/1.json")).unwrap())
            .unwrap();
    assert!(intent["gi"].is_null());
    // The admin creates the same profile at the very placement the dead allocation had chosen.
    let start = intent["placement"]["start"].as_u64().unwrap() as u32;
    let profile = intent["profile_id"].as_u64().unwrap() as u32;
    let admins = sim.update(|m| {
        let gi = m.create_gi(0, profile, start).unwrap();
        m.create_default_ci(0, gi).unwrap().mig_uuid
    });
    let gc = sim.ok(&["gc"]);
    let status = sim.status();
    assert!(
        instances(&status)
            .iter()
            .any(|(_, _, u)| u.as_deref() == Some(&*admins)),
        "gc destroyed the admin's instance: {gc}"
    );
    assert!(
        gc.contains("migrun cannot tell, so it leaves it alone"),
        "{gc}"
    );
    assert!(std::fs::read_dir(sim.state_dir().join("intents"))
        .unwrap()
        .next()
        .is_none());
    // It is a found instance now: handed out, never destroyed.
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "3g.40gb", "--json"])).unwrap();
    assert_eq!(json["mig_uuid"], admins.as_str());
    assert_eq!(json["created"], false);
}

// ---- (13) output that cannot be printed, non-ASCII targets ----

#[test]
fn an_allocation_nobody_could_read_is_given_back() {
    for json in [false, true] {
        let sim = Sim::new("h100-80gb");
        sim.ok(&["gc"]);
        // stdout is a pipe whose reader is gone (`migrun alloc --json | true`, after `true` exited).
        // Close-on-exec, so no process another test thread starts keeps the read end open.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(r);
        let mut args = vec!["alloc", "--profile", "1g.10gb"];
        if json {
            args.push("--json");
        }
        let out = sim
            .cmd(&args)
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("was granted but printing it failed: Broken pipe")
                && err.contains("the lease was released again, nothing is held"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let status = sim.status();
        assert!(leases(&status).is_empty() && instances(&status).is_empty());
    }
}

#[test]
fn a_non_ascii_release_target_is_unknown_not_a_panic() {
    let sim = Sim::new("h100-80gb");
    sim.ok(&["gc"]);
    for target in ["MI€-x", "€", "MIG€-1"] {
        let out = sim.run(&["release", target]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("no lease {target}")),
            "{}",
            stderr(&out)
        );
    }
}

// ---- (14) MIG mode changes and allocation ----

#[test]
fn mig_mode_changes_take_the_allocation_lock_and_a_pending_disable_refuses_allocation() {
    let sim = Sim::new("h100-80gb:2");
    sim.ok(&["gc"]);
    // While an allocation holds the lock, a mode change waits for it.
    let lock = migrun::statedir::lock_file(&sim.state_dir().join("alloc.lock")).unwrap();
    let mut child = sim
        .cmd(&["mig", "disable", "--gpu", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "mig disable did not wait for the allocation lock"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("pending"), "{}", stdout(&out));

    let out = sim.run(&["alloc", "--profile", "1g.10gb", "--gpu", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("disabling MIG mode is pending on it"),
        "{}",
        stderr(&out)
    );
    // Without --gpu, the other GPU serves.
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "1g.10gb", "--json"])).unwrap();
    assert_eq!(json["gpu"], 1);
}

// ---- (5) a state dir is for one machine, and real GPUs for one state dir ----

fn fake_cmd(fake: &FakeNvml, state: &Path) -> assert_cmd::Command {
    let mut c = fake.command();
    c.env("MIGRUN_STATE_DIR", state)
        .env("MIGRUN_CONFIG", fake.dir().join("config.toml"));
    c
}

fn fake_ok(fake: &FakeNvml, state: &Path, args: &[&str]) -> String {
    let out = fake_cmd(fake, state).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn fake_fails(fake: &FakeNvml, state: &Path, args: &[&str]) -> String {
    let out = fake_cmd(fake, state).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    stderr(&out)
}

fn new_fake(spec: &str) -> FakeNvml {
    let f = FakeNvml::new(spec);
    std::fs::write(f.dir().join("config.toml"), "").unwrap();
    f
}

#[test]
fn the_simulator_is_refused_on_a_state_dir_for_real_gpus() {
    let fake = new_fake("h100-80gb:2");
    let state = fake.state_dir();
    fake_ok(&fake, &state, &["alloc", "--profile", "3g.40gb"]);
    let before = std::fs::read(state.join("leases/1.json")).unwrap();
    let out = Command::new(alloc_support::BIN)
        .args(["--state-dir"])
        .arg(&state)
        .arg("gc")
        .env("MIGRUN_SIMULATE", "h100-80gb:2")
        .env("MIGRUN_CONFIG", fake.dir().join("config.toml"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("belongs to the NVIDIA driver (NVML: GPU-")
            && err.contains("not to the simulator (--simulate h100-80gb:2)")
            && err.contains("run migrun without --simulate"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Nothing was touched: the lease stands, and no simulated machine was written there.
    assert_eq!(std::fs::read(state.join("leases/1.json")).unwrap(), before);
    assert!(!state.join("sim.json").exists());
    fake_ok(&fake, &state, &["gc"]);
    assert!(state.join("leases/1.json").exists());
}

#[test]
fn real_gpus_are_refused_on_a_simulator_state_dir() {
    let fake = new_fake("h100-80gb:2");
    let state = fake.dir().join("sim-state");
    let out = Command::new(alloc_support::BIN)
        .args(["--simulate", "h100-80gb:2", "--state-dir"])
        .arg(&state)
        .args(["alloc", "--profile", "1g.10gb"])
        .env("MIGRUN_CONFIG", fake.dir().join("config.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = fake_fails(&fake, &state, &["gc"]);
    assert!(
        err.contains("belongs to the simulator (--simulate h100-80gb:2), not to the NVIDIA driver"),
        "{err}"
    );
    assert!(fake.machine().gpus.iter().all(|g| g.instances.is_empty()));
}

#[test]
fn a_second_state_dir_on_the_same_gpus_is_refused_until_the_first_is_gone() {
    let fake = new_fake("h100-80gb:2");
    let a = fake.dir().join("a");
    let b = fake.dir().join("b");
    fake_ok(&fake, &a, &["alloc", "--profile", "7g.80gb"]);
    fake_ok(&fake, &a, &["alloc", "--profile", "7g.80gb"]);
    // B would see two unleased, found instances and hand them out again; it is refused instead.
    let err = fake_fails(&fake, &b, &["alloc", "--profile", "7g.80gb"]);
    assert!(
        err.contains(&format!("is managed through state dir {}", a.display()))
            && err.contains("a second state dir would lease its MIG instances twice"),
        "{err}"
    );
    fake_fails(&fake, &b, &["gc"]);
    assert_eq!(
        std::fs::read_dir(b.join("leases")).unwrap().count(),
        0,
        "nothing leased through B"
    );
    // Releasing through A works as before.
    fake_ok(&fake, &a, &["release", "1"]);
    fake_ok(&fake, &a, &["release", "2"]);
    // Once A is gone, its claims are stale and B may take the GPUs.
    std::fs::remove_dir_all(&a).unwrap();
    fake_ok(&fake, &b, &["alloc", "--profile", "7g.80gb"]);
}

#[test]
fn a_managed_gpu_that_nvml_no_longer_shows_stops_gc_instead_of_dropping_its_leases() {
    let two = new_fake("h100-80gb:2");
    let state = two.state_dir();
    fake_ok(
        &two,
        &state,
        &["alloc", "--profile", "7g.80gb", "--gpu", "1"],
    );
    // The same host seen with one GPU (GPU 0 has the same UUID; GPU 1 is hidden), claims in the same place.
    let claims = two
        .env()
        .into_iter()
        .find(|(k, _)| k == migrun::alloc::binding::CLAIMS_ENV)
        .unwrap()
        .1;
    let one = new_fake("h100-80gb:1").with_var(migrun::alloc::binding::CLAIMS_ENV, &claims);
    std::fs::write(one.dir().join("config.toml"), "").unwrap();
    let err = fake_fails(&one, &state, &["gc"]);
    assert!(
        err.contains("which NVML does not show now")
            && err.contains("migrun will not drop their leases"),
        "{err}"
    );
    assert!(state.join("leases/1.json").exists());
    fake_ok(&two, &state, &["gc"]);
    assert!(state.join("leases/1.json").exists());
}
