//! `migrun alloc / release / gc / status` through the binary on the simulator: output forms, --min-mem,
//! no-room explanations, ownership, `--handover` (root only, charged to `--for-uid`, collected with its holder), and bad input (one clear line, documented exit code, nothing changed).

mod alloc_support;

use alloc_support::{check_invariants, instances, leases, Sim};
use std::os::unix::fs::PermissionsExt;

fn fails(sim: &Sim, args: &[&str], code: i32, needle: &str) -> String {
    let out = sim.run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "migrun {args:?}: {err}");
    assert!(
        err.contains(needle),
        "migrun {args:?}: {err:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");
    err
}

#[test]
fn alloc_prints_uuid_and_lease_in_text_and_json() {
    let sim = Sim::new("h100-80gb:2");
    let (uuid, id) = sim.alloc(&["--profile", "3g.40gb", "--gpu", "1"]);
    assert_eq!(id, 1);
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "MIG 1g.10gb", "--json"])).unwrap();
    assert_eq!(json["lease"], 2);
    assert_eq!(json["profile"], "1g.10gb");
    assert!(json["mig_uuid"].as_str().unwrap().starts_with("MIG-"));
    assert_eq!(json["created"], true);
    assert_eq!(json["holder"]["kind"], "manual");

    // status: an owner per instance and the lease list.
    let text = sim.ok(&["status"]);
    assert!(text.contains(&format!("{uuid}  lease 1 (manual")), "{text}");
    assert!(text.contains("leases:"), "{text}");
    let status = sim.status();
    assert_eq!(status["gpus"][1]["instances"][0]["owner"]["id"], 1);
    check_invariants(&status, true);

    // release by MIG UUID and by id; the JSON form.
    let out = sim.ok(&["release", &uuid]);
    assert_eq!(out.trim(), format!("lease 1 released; {uuid} destroyed"));
    let out: serde_json::Value =
        serde_json::from_str(&sim.ok(&["release", "2", "--json"])).unwrap();
    assert_eq!(out["outcome"]["result"], "destroyed");
    assert_eq!(out["outcome"]["lease"], 2);
    assert!(instances(&sim.status()).is_empty());
}

#[test]
fn holder_pid_lease_is_released_when_the_process_dies() {
    let sim = Sim::new("h100-80gb");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let (_, id) = sim.alloc(&["--profile", "7g.80gb", "--holder-pid", &pid]);
    assert!(sim.ok(&["gc"]).contains("nothing to do"));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains(&format!("lease {id} released")), "{gc}");
    assert!(gc.contains(&format!("holder pid {pid} is gone")), "{gc}");
    assert!(instances(&sim.status()).is_empty());
}

#[test]
fn min_mem_sizes_by_need() {
    let sim = Sim::new("h100-80gb");
    let profile = |size: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&sim.ok(&["alloc", "--json", "--min-mem", size])).unwrap();
        sim.ok(&["release", &v["lease"].to_string()]);
        v["profile"].as_str().unwrap().to_string()
    };
    assert_eq!(profile("40g"), "3g.40gb");
    assert_eq!(profile("20000m"), "1g.20gb");
    assert_eq!(profile("10GB"), "1g.10gb");
    assert_eq!(profile("39.5GiB"), "3g.40gb");
    assert_eq!(profile("45gb"), "7g.80gb");
    sim.alloc(&["--profile", "7g.80gb"]);
    fails(
        &sim,
        &["alloc", "--min-mem", "40g"],
        3,
        "no room for a profile with at least 38147 MiB on GPU 0",
    );
    fails(
        &sim,
        &["alloc", "--min-mem", "100g"],
        2,
        "no profile has 95368 MiB (the largest is 7g.80gb",
    );
}

#[test]
fn no_room_is_exit_3_with_slot_map_holders_and_a_suggestion() {
    let sim = Sim::new("h100-80gb");
    sim.alloc(&["--profile", "1g.10gb"]);
    let (_, id) = sim.alloc(&["--profile", "3g.40gb"]);
    sim.ok(&[
        "sim",
        "create-foreign",
        "--gpu",
        "0",
        "--profile",
        "1g.10gb",
    ]);
    // Wherever the policy put them, 3g.40gb no longer fits: the message names both placements and holders.
    let err = fails(
        &sim,
        &["alloc", "--profile", "3g.40gb"],
        3,
        "no room for 3g.40gb on GPU 0 (GPU-",
    );
    assert!(
        err.contains("needs placement 0 or 4; 0 is held by"),
        "{err}"
    );
    assert!(err.contains(&format!("3g.40gb (lease {id})")), "{err}");
    assert!(err.contains("fits now"), "{err}");
    assert!(
        err.lines().nth(1).unwrap().contains("GPU 0 |"),
        "slot map: {err}"
    );
    // The foreign instance is reused, not destroyed, and stays after release and gc.
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "1g.10gb", "--json"])).unwrap();
    assert_eq!(json["created"], false);
    let out = sim.ok(&["release", &json["lease"].to_string()]);
    assert!(out.contains("kept (migrun did not create it)"), "{out}");
    sim.ok(&["gc"]);
    let status = sim.status();
    assert!(instances(&status)
        .iter()
        .any(|(_, _, u)| u.as_deref() == json["mig_uuid"].as_str()));
}

#[test]
fn busy_instance_is_never_destroyed_or_handed_out() {
    let sim = Sim::new("h100-80gb");
    let json: serde_json::Value =
        serde_json::from_str(&sim.ok(&["alloc", "--profile", "7g.80gb", "--json"])).unwrap();
    let gi = json["gi"].to_string();
    sim.ok(&[
        "sim",
        "set-processes",
        "--gpu",
        "0",
        "--gi",
        &gi,
        "--count",
        "3",
    ]);
    let out = sim.ok(&["release", "1"]);
    assert!(out.contains("still in use, so it is draining"), "{out}");
    fails(
        &sim,
        &["alloc", "--profile", "7g.80gb"],
        3,
        "lease 1, draining",
    );
    sim.ok(&["gc"]);
    assert_eq!(instances(&sim.status()).len(), 1, "busy: not destroyed");
    sim.ok(&[
        "sim",
        "set-processes",
        "--gpu",
        "0",
        "--gi",
        &gi,
        "--count",
        "0",
    ]);
    assert!(sim.ok(&["gc"]).contains("lease 1 released"));
    assert!(instances(&sim.status()).is_empty());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    let sim = Sim::new("h100-80gb");
    sim.alloc(&["--profile", "1g.10gb"]);
    let before = sim.snapshot_files();
    let one_line = |args: &[&str], code: i32, needle: &str| {
        let err = fails(&sim, args, code, needle);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    };
    one_line(
        &["release", "42"],
        2,
        "no lease 42; `migrun status` lists the leases",
    );
    one_line(&["release", "MIG-nope"], 2, "no lease MIG-nope");
    one_line(&["release", "lease-seven"], 2, "no lease lease-seven");
    one_line(&["alloc"], 2, "say what to allocate: --profile P");
    one_line(
        &["alloc", "--min-mem", "20"],
        2,
        "bad --min-mem \"20\": no unit",
    );
    one_line(&["alloc", "--min-mem", "20qb"], 2, "unknown unit");
    one_line(
        &["alloc", "--profile", "3g.41gb"],
        2,
        "did you mean 3g.40gb?",
    );
    one_line(
        &["alloc", "--profile", "1g.10gb", "--gpu", "3"],
        2,
        "bad --gpu \"3\"",
    );
    one_line(
        &["alloc", "--profile", "1g.10gb", "--holder-pid", "999999999"],
        2,
        "process 999999999 does not exist",
    );
    assert_eq!(sim.snapshot_files(), before, "nothing changed");

    // A malformed lease file stops allocation and gc with the file's name.
    let bad = sim.state_dir().join("leases/7.json");
    std::fs::write(&bad, "{\"id\": 7,").unwrap();
    let before = sim.snapshot_files();
    one_line(
        &["alloc", "--profile", "1g.10gb"],
        2,
        "leases/7.json is not a valid migrun record",
    );
    one_line(&["gc"], 2, "leases/7.json");
    assert_eq!(sim.snapshot_files(), before, "nothing changed");
    std::fs::remove_file(&bad).unwrap();

    // A state dir reached through a symlink, or owned by someone else.
    let link = sim.tmp.path().join("link");
    std::os::unix::fs::symlink(sim.state_dir(), &link).unwrap();
    let out = sim
        .cmd(&["alloc", "--profile", "1g.10gb"])
        .env("MIGRUN_STATE_DIR", &link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is a symlink; migrun refuses to follow it"),
        "{err}"
    );

    let before = sim.snapshot_files();
    nix::unistd::chown(
        &sim.state_dir(),
        Some(nix::unistd::Uid::from_raw(12345)),
        None,
    )
    .expect("chown needs root (the test host runs tests as root)");
    one_line(
        &["alloc", "--profile", "1g.10gb"],
        2,
        "is owned by uid 12345",
    );
    one_line(&["release", "1"], 2, "is owned by uid 12345");
    nix::unistd::chown(&sim.state_dir(), Some(nix::unistd::geteuid()), None).unwrap();
    std::fs::set_permissions(sim.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    one_line(&["gc"], 2, "chmod 700");
    std::fs::set_permissions(sim.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(sim.snapshot_files(), before, "nothing changed");
    assert_eq!(leases(&sim.status()).len(), 1);
}

/// `--slurm-step` (the SPANK plugin's call, from slurmstepd as root): the lease names the step and the calling
/// process, is charged to `--for-uid` with that user's limits, shows as `slurm job 42.0, uid 1000`, and is kept by
/// gc while the recorded process runs and released once it is gone and Slurm does not list the step.
#[test]
fn slurm_step_leases_name_the_step_and_follow_the_calling_process() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let sim = Sim::new("h100-80gb");
    std::fs::write(sim.config_path(), "max_leases_per_user = 1\n").unwrap();
    // A shell stands in for slurmstepd: it runs migrun, then waits on its stdin, so it lives until we close that.
    let base = sim.cmd(&[]);
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(format!(
        "{} alloc --profile 1g.10gb --for-uid 1000 --slurm-step 42.0 --json && read _",
        alloc_support::BIN
    ));
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let mut stepd = sh
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let reader = std::io::BufReader::new(stepd.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        out.push_str(&line);
        if line == "}" {
            break;
        }
    }
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["holder"]["kind"], "slurm", "{json:#}");
    assert_eq!(json["holder"]["job"], 42);
    assert_eq!(json["holder"]["step"], 0);
    assert_eq!(
        json["holder"]["pid"],
        stepd.id(),
        "the caller is recorded, not a pid given on the command line"
    );
    assert_eq!(json["uid"], 1000);
    let text = sim.ok(&["status"]);
    assert!(text.contains("slurm job 42.0, uid 1000"), "{text}");

    // The job's user is at their limit: another step of theirs is refused by policy.
    fails(
        &sim,
        &[
            "alloc",
            "--profile",
            "1g.10gb",
            "--for-uid",
            "1000",
            "--slurm-step",
            "42.1",
        ],
        2,
        "max_leases_per_user = 1",
    );

    // Alive while the step daemon runs; released once it is gone.
    assert!(sim.ok(&["gc"]).contains("nothing to do"));
    assert_eq!(leases(&sim.status()).len(), 1);
    drop(stepd.stdin.take());
    stepd.wait().unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains("holder slurm job 42.0 is gone"), "{gc}");
    assert!(leases(&sim.status()).is_empty());
}

#[test]
fn handover_alloc_is_root_only_charged_to_the_user_and_collected_with_its_holder() {
    use std::os::unix::process::CommandExt;
    let sim = Sim::new("h100-80gb");
    std::fs::write(sim.config_path(), "max_leases_per_user = 1\n").unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let handover = |uid: &str| {
        vec![
            "alloc",
            "--profile",
            "1g.10gb",
            "--for-uid",
            uid,
            "--holder-pid",
            &pid,
            "--handover",
            "--json",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let args = handover("2001");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Bad combinations are one line each (docs/bad-inputs.md); a sudo user and a non-root caller are refused.
    for (bad, needle) in [
        (
            vec!["alloc", "--profile", "1g.10gb", "--handover", "--json"],
            "--handover needs --holder-pid PID",
        ),
        (
            vec![
                "alloc",
                "--profile",
                "1g.10gb",
                "--holder-pid",
                &pid,
                "--handover",
            ],
            "--handover needs --json",
        ),
    ] {
        let err = fails(&sim, &bad, 2, needle);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let out = sim.cmd(&args).env("SUDO_UID", "2001").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("`migrun alloc --handover` is not open to a user through sudo"),
        "{err}"
    );
    std::fs::set_permissions(sim.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sim.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sim.cmd(&args).uid(65534).gid(65534).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--handover is for a spawner running as root") && err.contains("uid 65534"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!sim.state_dir().join("leases").exists() || leases(&sim.status()).is_empty());

    // Root: the lease is the user's, held by the process, and its token is recorded root-only, not in status.
    let doc: serde_json::Value = serde_json::from_str(&sim.ok(&args)).unwrap();
    let token = doc["handover"]["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32, "{doc}");
    let id = doc["lease"].to_string();
    assert_eq!(doc["uid"], 2001);
    assert_eq!(doc["holder"]["kind"], "process");
    assert_eq!(doc["handover"]["env"]["MIGRUN_LEASE"], id.as_str());
    assert_eq!(doc["handover"]["env"]["MIGRUN_HANDOVER"], token.as_str());
    assert_eq!(
        doc["handover"]["annotations"]["migrun.handover"],
        token.as_str()
    );
    let record = sim.state_dir().join(format!("handover/{id}.json"));
    let meta = std::fs::metadata(&record).unwrap();
    assert_eq!(meta.permissions().mode() & 0o077, 0, "root's only");
    assert!(!sim.ok(&["status", "--json"]).contains(&token));

    // The user's second lease is refused by max_leases_per_user, in migrun's usual line.
    let err = fails(&sim, &args, 2, "refused by policy: max_leases_per_user = 1");
    assert!(err.contains("uid 2001 holds 1 lease(s)"), "{err}");
    let other = handover("2002");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let second: serde_json::Value = serde_json::from_str(&sim.ok(&other)).unwrap();
    assert_eq!(second["uid"], 2002);

    // The spawner dies before any container took its leases: gc gives them back.
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains(&format!("lease {id} released")), "{gc}");
    assert!(gc.contains(&format!("holder pid {pid} is gone")), "{gc}");
    assert!(leases(&sim.status()).is_empty());
    assert!(instances(&sim.status()).is_empty());
}

/// `keep_idle_s` (issue 23): `migrun gc` destroys instances migrun kept warm once they have been idle that long,
/// never a leased one; with a long limit the kept instance stays and is reused.
#[test]
fn gc_expires_kept_instances_idle_for_keep_idle_s() {
    let sim = Sim::new("h100-80gb");
    std::fs::write(
        sim.config_path(),
        "release = \"keep\"\nkeep_idle_s = 3600\n",
    )
    .unwrap();
    let (kept, id) = sim.alloc(&["--profile", "1g.10gb"]);
    let (leased, _) = sim.alloc(&["--profile", "2g.20gb"]);
    sim.ok(&["release", &id.to_string()]);
    sim.ok(&["gc"]);
    assert_eq!(
        instances(&sim.status()).len(),
        2,
        "idle for less than an hour: kept"
    );
    std::fs::write(sim.config_path(), "release = \"keep\"\nkeep_idle_s = 0\n").unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(gc.contains("keep_idle_s"), "{gc}");
    let status = sim.status();
    check_invariants(&status, true);
    let left: Vec<_> = instances(&status)
        .into_iter()
        .filter_map(|(_, _, u)| u)
        .collect();
    assert_eq!(
        left,
        vec![leased],
        "the kept one ({kept}) expired, the leased one stays"
    );
}

/// `warm` (issue 23): `migrun gc` makes the idle instances the warm pool asks for (outside the lock, as every create),
/// the next request of that profile reuses one, and nothing is made while a request waits.
#[test]
fn gc_makes_the_warm_pool_ready_and_requests_reuse_it() {
    let sim = Sim::new("h100-80gb");
    std::fs::write(sim.config_path(), "warm = { \"1g.10gb\" = 2 }\n").unwrap();
    let gc = sim.ok(&["gc"]);
    assert!(
        gc.contains("2 idle 1g.10gb instance(s) of migrun's ready"),
        "{gc}"
    );
    let status = sim.status();
    assert_eq!(instances(&status).len(), 2);
    assert!(leases(&status).is_empty());
    // Idempotent: a second gc makes nothing more.
    sim.ok(&["gc"]);
    assert_eq!(instances(&sim.status()).len(), 2);
    let ready: Vec<String> = instances(&sim.status())
        .into_iter()
        .filter_map(|(_, _, u)| u)
        .collect();
    let (uuid, _) = sim.alloc(&["--profile", "1g.10gb"]);
    assert!(ready.contains(&uuid), "a warm instance is reused");
    check_invariants(&sim.status(), false);
}
