//! Runs every row of docs/bad-inputs.md through the binary: the message, the exit code, and that nothing changed
//! (no lease, no instance, no file); the doc and this table must name the same rows. It must not need a GPU or docker.

mod alloc_support;

use alloc_support::{Sim, BIN};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One row of docs/bad-inputs.md.
struct Row {
    id: String,
    message: String,
    exit: i32,
}

fn doc_rows() -> Vec<Row> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bad-inputs.md"))
        .expect("docs/bad-inputs.md");
    doc.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Id ") && !l.starts_with("|--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 6, "row {l:?} needs 6 cells");
            let m = cells[3];
            assert!(
                m.starts_with('`') && m.ends_with('`'),
                "message cell in backticks: {l:?}"
            );
            Row {
                id: cells[0].to_string(),
                message: m[1..m.len() - 1].to_string(),
                exit: cells[4]
                    .parse()
                    .unwrap_or_else(|_| panic!("exit code in {l:?}")),
            }
        })
        .collect()
}

/// How to reproduce a row: the config, a setup step, then the command (args, extra env, stdin).
struct Case {
    config: &'static str,
    setup: fn(&Sim),
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
}

fn none(_: &Sim) {}

/// Make the simulated machine and the state dir exist, so the snapshot compares a real state.
fn init(sim: &Sim) {
    sim.ok(&["gc"]);
}

/// [`init`] without the row's config (whose broken CDI setting would fail gc too).
fn init_default_config(sim: &Sim) {
    let o = sim
        .cmd(&["gc"])
        .env("MIGRUN_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn one_lease_of_uid_1000(sim: &Sim) {
    let o = sim
        .cmd(&["alloc", "--profile", "1g.10gb", "--for-uid", "1000"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fresh_dir(p: &Path, mode: u32) {
    std::fs::create_dir(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn bundle(sim: &Sim, config: &str) -> String {
    let b = sim.tmp.path().join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("config.json"), config).unwrap();
    b.display().to_string()
}

/// The state JSON a runtime pipes to a hook.
fn hook_state(id: &str, bundle: &str) -> Vec<u8> {
    serde_json::json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": std::process::id(), "bundle": bundle})
        .to_string()
        .into_bytes()
}

/// Lease 1, held by this (live) test process, and a bundle whose config names it the way podman's
/// precreate would, with a guessed hand-over token and the lease's MIG UUID.
fn lease_of_a_live_process_named_by_a_forged_config(sim: &Sim) {
    let (mig, lease) = sim.alloc(&[
        "--profile",
        "1g.10gb",
        "--holder-pid",
        &std::process::id().to_string(),
    ]);
    bundle(
        sim,
        &serde_json::json!({
            "annotations": {"migrun.profile": "1g.10gb", "migrun.lease": lease.to_string(),
                "io.container.manager": "libpod", "migrun.handover": "0123456789abcdef0123456789abcdef"},
            "process": {"env": [format!("NVIDIA_VISIBLE_DEVICES={mig}"), format!("MIGRUN_LEASE={lease}")]}
        })
        .to_string(),
    );
}

/// Lease 1 handed over by `alloc --handover` (held by this test's process, which stays alive), and a
/// bundle that names it with a guessed token in env, as docker would pass a spawner's container.
fn handover_lease_named_with_a_guessed_token(sim: &Sim) {
    let pid = std::process::id().to_string();
    let o = sim
        .cmd(&[
            "alloc",
            "--profile",
            "1g.10gb",
            "--holder-pid",
            &pid,
            "--handover",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bundle(
        sim,
        r#"{"process": {"env": ["MIGRUN_PROFILE=1g.10gb", "MIGRUN_LEASE=1", "MIGRUN_HANDOVER=0123456789abcdef0123456789abcdef"]}}"#,
    );
}

fn case(id: &str, sim: &Sim) -> Option<Case> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let launcher = |extra: &[&str]| {
        let mut v = s(&[
            "--profile",
            "1g.10gb",
            "--inject",
            "env",
            "--docker",
            "/bin/true",
        ]);
        v.extend(s(extra));
        v
    };
    let c = |config, setup: fn(&Sim), args: Vec<String>| Case {
        config,
        setup,
        args,
        env: vec![],
        stdin: vec![],
    };
    Some(match id {
        "cli-unknown-profile" => c("", init, s(&["alloc", "--profile", "9g.99gb"])),
        "cli-bad-profile" => c("", init, s(&["alloc", "--profile", "banana"])),
        "cli-profile-and-min-mem" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--min-mem", "10g"]),
        ),
        "cli-nothing-asked" => c("", init, s(&["alloc"])),
        "cli-bad-gpu" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--gpu", "7"]),
        ),
        "cli-bad-size" => c("", init, s(&["alloc", "--min-mem", "lots"])),
        "cli-bad-wait" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--wait=abc"]),
        ),
        "cli-unknown-lease" => c("", init, s(&["release", "99"])),
        "cli-bad-simulate" => c("", init, s(&["--simulate", "nosuch", "status"])),
        "cli-too-big" => c("", init, s(&["alloc", "--min-mem", "200g"])),
        "cli-not-a-command" => c("", init, s(&["statsu"])),
        "cli-not-a-command-plural" => c("", init, s(&["profile"])),
        "cli-command-after-launcher-flags" => c("", init, s(&["--gpu", "3", "profiles"])),
        "cli-near-miss-flag" => c("", init, s(&["--proflie", "3g.40gb", "busybox"])),
        "cli-profile-near-miss" => c("", init, s(&["alloc", "--profile", "3g.40g"])),
        "cli-profile-no-dot" => c("", init, s(&["alloc", "--profile", "3g40gb"])),
        "cli-dry-run-no-toolkit" => c(
            "",
            init,
            s(&["--profile", "3g.40g", "--dry-run", "busybox", "true"]),
        ),
        "cli-non-ascii-lease" => c("", init, s(&["release", "MI€-x"])),
        "cli-bad-slurm-step" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--slurm-step", "42"]),
        ),
        "cli-slurm-step-and-holder-pid" => c(
            "",
            init,
            s(&[
                "alloc",
                "--profile",
                "1g.10gb",
                "--slurm-step",
                "42.0",
                "--holder-pid",
                "1",
            ]),
        ),
        "mig-disable-pending" => c(
            "",
            |sim| {
                sim.ok(&["mig", "disable", "--gpu", "0"]);
            },
            s(&["alloc", "--profile", "1g.10gb", "--gpu", "0"]),
        ),
        "cfg-unknown-key" => c("max_leases_totl = 3", none, s(&["status"])),
        "cfg-bad-type" => c("max_leases_total = \"many\"", none, s(&["status"])),
        "cfg-bad-release" => c("release = \"recycle\"", none, s(&["status"])),
        "cfg-bad-release-wait" => c("release_wait_ms = -1", none, s(&["status"])),
        "cfg-bad-keep-idle" => c("keep_idle_s = \"soon\"", none, s(&["status"])),
        "cfg-bad-warm" => c("warm = { \"banana\" = 1 }", none, s(&["status"])),
        "cli-bad-sim-latency" => c("", init, s(&["sim", "latency", "create-gi=fast"])),
        "cfg-missing-file" => c(
            "",
            init,
            s(&["--config", "/nonexistent/migrun.toml", "status"]),
        ),
        "cfg-bad-allowed-profile" => c(
            "allowed_profiles = [\"banana\"]",
            init,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "cfg-ledger-relative" => c("ledger = \"ledger.jsonl\"", none, s(&["status"])),
        "cfg-ledger-rotate-tiny" => c("ledger_rotate_bytes = 10", none, s(&["status"])),
        "usage-bad-since" => c("", init, s(&["usage", "--since", "7y"])),
        "ledger-symlink" => c(
            "",
            |sim| {
                init(sim);
                let target = sim.tmp.path().join("elsewhere.jsonl");
                std::fs::write(&target, "").unwrap();
                std::os::unix::fs::symlink(&target, sim.state_dir().join("ledger.jsonl")).unwrap();
            },
            s(&["usage"]),
        ),
        "cdi-toolkit-wrong-kind" => c(
            concat!(
                "cdi_toolkit_spec = \"",
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/cdi/migrun-mig-7.json\"\n"
            ),
            init,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "cdi-toolkit-missing" => c(
            "cdi_toolkit_spec = \"/nonexistent/nvidia.yaml\"",
            init,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "cdi-name-bad-chars" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--name", "a b"]),
        ),
        "cdi-name-lease-id" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--name", "12"]),
        ),
        "cdi-name-mig-uuid" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--name", "MIG-x"]),
        ),
        "cdi-name-edge" => c("", init, s(&["alloc", "--profile", "1g.10gb", "--name=x."])),
        "cdi-name-taken" => c(
            "",
            |sim| {
                sim.alloc(&["--profile", "1g.10gb", "--name", "trainer"]);
            },
            s(&["alloc", "--profile", "1g.10gb", "--name", "trainer"]),
        ),
        "cdi-dir-not-a-dir" => c(
            "cdi_dir = \"/dev/null/cdi\"",
            init_default_config,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "policy-ci-profile" => c(
            "allowed_profiles = [\"1g.10gb\"]",
            init,
            s(&["alloc", "--profile", "1c.3g.40gb"]),
        ),
        "cfg-bad-allowed-ci-profile" => c(
            "allowed_profiles = [\"4c.3g.40gb\"]",
            init,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "ci-unknown-profile" => c("", init, s(&["alloc", "--profile", "1c.7g.80gb"])),
        "ci-too-many-slices" => c("", init, s(&["alloc", "--profile", "4c.3g.40gb"])),
        "policy-profile" => c(
            "allowed_profiles = [\"1g.10gb\"]",
            init,
            s(&["alloc", "--profile", "2g.20gb"]),
        ),
        "policy-gpu" => {
            let _ = sim;
            c(
                "gpus = [1]",
                init,
                s(&["alloc", "--profile", "1g.10gb", "--gpu", "0"]),
            )
        }
        "policy-per-user" => c(
            "max_leases_per_user = 1",
            one_lease_of_uid_1000,
            s(&["alloc", "--profile", "1g.10gb", "--for-uid", "1000"]),
        ),
        "policy-total" => c(
            "max_leases_total = 1",
            one_lease_of_uid_1000,
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "sudo-state-dir" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c("", one_lease_of_uid_1000, s(&["release", "1"]))
        },
        "sudo-hook" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            stdin: br#"{"ociVersion":"1.0.2","id":"x","status":"stopped","bundle":"/tmp"}"#
                .to_vec(),
            ..c("", one_lease_of_uid_1000, s(&["hook", "poststop"]))
        },
        "sudo-teardown" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c(
                "",
                one_lease_of_uid_1000,
                s(&["teardown", "--gpu", "0", "--include-foreign"]),
            )
        },
        "sudo-slurm-step" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c(
                "",
                init,
                s(&["alloc", "--profile", "1g.10gb", "--slurm-step", "42.0"]),
            )
        },
        "sudo-mig" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c("", init, s(&["mig", "disable", "--all"]))
        },
        "sudo-refill-warm" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c("warm = { \"1g.10gb\" = 1 }\n", init, s(&["__refill-warm"]))
        },
        "dir-symlink" => c(
            "",
            |sim| {
                let real = sim.tmp.path().join("real");
                fresh_dir(&real, 0o700);
                std::os::unix::fs::symlink(&real, sim.state_dir()).unwrap();
            },
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "dir-world-writable" => c(
            "",
            |sim| fresh_dir(&sim.state_dir(), 0o777),
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "dir-wrong-owner" => c(
            "",
            |sim| {
                fresh_dir(&sim.state_dir(), 0o700);
                std::os::unix::fs::chown(sim.state_dir(), Some(65534), Some(65534)).unwrap();
            },
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "dir-not-a-dir" => c(
            "",
            |sim| std::fs::write(sim.state_dir(), "x").unwrap(),
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "dir-trailing-slash" => Case {
            env: vec![(
                "MIGRUN_STATE_DIR",
                format!("{}/link/", sim.tmp.path().display()),
            )],
            ..c(
                "",
                |sim| {
                    let real = sim.tmp.path().join("real");
                    fresh_dir(&real, 0o700);
                    std::os::unix::fs::symlink(&real, sim.tmp.path().join("link")).unwrap();
                },
                s(&["alloc", "--profile", "1g.10gb"]),
            )
        },
        "dir-open-subdir" => c(
            "",
            |sim| {
                init(sim);
                let p = sim.state_dir().join("intents");
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
            },
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "dir-other-backend" => c(
            "",
            |sim| {
                fresh_dir(&sim.state_dir(), 0o700);
                let p = sim.state_dir().join("backend.json");
                std::fs::write(
                    &p,
                    r#"{"schema": 1, "backend": "nvml", "gpus": ["GPU-0a1b"]}"#,
                )
                .unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
            },
            s(&["alloc", "--profile", "1g.10gb"]),
        ),
        "lease-fifo" => c(
            "",
            |sim| {
                one_lease_of_uid_1000(sim);
                let p = sim.state_dir().join("leases/1.json");
                std::fs::remove_file(&p).unwrap();
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            },
            s(&["release", "1"]),
        ),
        "lease-too-big" => c(
            "",
            |sim| {
                one_lease_of_uid_1000(sim);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(sim.state_dir().join("leases/1.json"))
                    .unwrap();
                f.set_len(2 << 20).unwrap();
            },
            s(&["release", "1"]),
        ),
        "lease-path-uuid" => c(
            "",
            |sim| {
                one_lease_of_uid_1000(sim);
                let p = sim.state_dir().join("leases/1.json");
                let mut l: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                l["gpu_uuid"] = "../../x".into();
                std::fs::write(&p, l.to_string()).unwrap();
            },
            s(&["release", "1"]),
        ),
        "lease-symlink" => c(
            "",
            |sim| {
                one_lease_of_uid_1000(sim);
                let p = sim.state_dir().join("leases/1.json");
                let copy = sim.tmp.path().join("copy.json");
                std::fs::copy(&p, &copy).unwrap();
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(&copy, &p).unwrap();
            },
            s(&["release", "1"]),
        ),
        "lease-garbage" => c(
            "",
            |sim| {
                one_lease_of_uid_1000(sim);
                std::fs::write(sim.state_dir().join("leases/1.json"), "{\"id\":").unwrap();
            },
            s(&["release", "1"]),
        ),
        "hook-empty-stdin" => c("", init, s(&["hook", "prestart"])),
        "hook-bad-json" => Case {
            stdin: b"{\"id\": ".to_vec(),
            ..c("", init, s(&["hook", "prestart"]))
        },
        "hook-bad-stage" => c("", init, s(&["hook", "bogus"])),
        "shim-no-bundle" => c(
            "",
            init,
            s(&["runtime", "create", "--bundle", "/nonexistent", "cid"]),
        ),
        "shim-bad-profile" => {
            let b = bundle(sim, r#"{"process": {"env": ["MIGRUN_PROFILE=banana"]}}"#);
            c("", init, s(&["runtime", "create", "--bundle", &b, "cid"]))
        }
        "shim-bad-config" => {
            let b = bundle(sim, r#"{"process":"#);
            c("", init, s(&["runtime", "create", "--bundle", &b, "cid"]))
        }
        "hook-foreign-lease" => {
            let b = bundle(
                sim,
                r#"{"annotations": {"migrun.profile": "1g.10gb", "migrun.lease": "1"}}"#,
            );
            Case {
                stdin: hook_state("attacker", &b),
                ..c("", one_lease_of_uid_1000, s(&["hook", "prestart"]))
            }
        }
        "hook-posing-as-podman" => {
            let b = sim.tmp.path().join("bundle").display().to_string();
            Case {
                stdin: hook_state("attacker", &b),
                ..c(
                    "",
                    lease_of_a_live_process_named_by_a_forged_config,
                    s(&["hook", "prestart"]),
                )
            }
        }
        "shim-wrong-handover" => {
            let b = sim.tmp.path().join("bundle").display().to_string();
            c(
                "",
                handover_lease_named_with_a_guessed_token,
                s(&["runtime", "create", "--bundle", &b, "cid"]),
            )
        }
        "sudo-handover" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c(
                "",
                init,
                s(&[
                    "alloc",
                    "--profile",
                    "1g.10gb",
                    "--holder-pid",
                    "1",
                    "--handover",
                    "--json",
                ]),
            )
        },
        "cli-handover-without-holder" => c(
            "",
            init,
            s(&["alloc", "--profile", "1g.10gb", "--handover", "--json"]),
        ),
        "cli-handback-not-an-id" => c(
            "",
            init,
            s(&["release", "gpu-notebook", "--if-handover-pending"]),
        ),
        "sudo-handback" => Case {
            env: vec![("SUDO_UID", "1001".into())],
            ..c("", init, s(&["release", "1", "--if-handover-pending"]))
        },
        "cli-handover-without-json" => c(
            "",
            init,
            s(&[
                "alloc",
                "--profile",
                "1g.10gb",
                "--holder-pid",
                "1",
                "--handover",
            ]),
        ),
        "shim-unreadable-args" => {
            let b = bundle(sim, r#"{"annotations": {"migrun.profile": "1g.10gb"}}"#);
            c(
                "",
                init,
                s(&["runtime", "create", "--no-pivot", "cid", "--bundle", &b]),
            )
        }
        "shim-log-symlink" => {
            let log = sim.tmp.path().join("runtime.log").display().to_string();
            c(
                "",
                |sim| {
                    init(sim);
                    let target = sim.tmp.path().join("root-owned.txt");
                    std::fs::write(&target, "keep\n").unwrap();
                    std::os::unix::fs::symlink(&target, sim.tmp.path().join("runtime.log"))
                        .unwrap();
                },
                s(&[
                    "runtime",
                    "--log",
                    &log,
                    "--log-format",
                    "text",
                    "create",
                    "--bundle",
                    "/nonexistent",
                    "cid",
                ]),
            )
        }
        "docker-visible-devices" => c(
            "",
            init,
            launcher(&["-e", "NVIDIA_VISIBLE_DEVICES=all", "img"]),
        ),
        "docker-mig-config" => c(
            "",
            init,
            launcher(&["-e", "NVIDIA_MIG_CONFIG_DEVICES=all", "img"]),
        ),
        "docker-mig-monitor" => c(
            "",
            init,
            launcher(&["--env", "NVIDIA_MIG_MONITOR_DEVICES=all", "img"]),
        ),
        "docker-gpus" => c("", init, launcher(&["--gpus", "all", "img"])),
        "docker-cdi-device" => c(
            "",
            init,
            launcher(&["--device", "nvidia.com/gpu=all", "img"]),
        ),
        "docker-cdi-migrun-device" => {
            c("", init, launcher(&["--device", "migrun.io/mig=1", "img"]))
        }
        "docker-device-spelled" => c("", init, launcher(&["--device", "/dev/./nvidia0", "img"])),
        "docker-device-dev" => c("", init, launcher(&["--device", "/dev/", "img"])),
        "docker-device-symlink" => {
            // Made before the first snapshot, so both snapshots hold it.
            let link = sim.tmp.path().join("x");
            std::os::unix::fs::symlink("/dev/nvidia0", &link).unwrap();
            c(
                "",
                init,
                launcher(&["--device", &link.display().to_string(), "img"]),
            )
        }
        "docker-bind-dev" => c("", init, launcher(&["--rm", "-v", "/dev:/dev", "img"])),
        "docker-mount-caps" => c(
            "",
            init,
            launcher(&[
                "--mount",
                "type=bind,source=/dev/nvidia-caps,target=/x",
                "img",
            ]),
        ),
        "docker-env-file-fifo" => {
            let f = sim.tmp.path().join("fifo.env");
            nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            c(
                "",
                init,
                launcher(&["--env-file", &f.display().to_string(), "img"]),
            )
        }
        "docker-env-file-cr" => {
            let f = sim.tmp.path().join("cr.env");
            std::fs::write(&f, "A=1\r\nNVIDIA_VISIBLE_DEVICES\r").unwrap();
            c(
                "",
                init,
                launcher(&["--env-file", &f.display().to_string(), "img"]),
            )
        }
        "docker-privileged" => c("", init, launcher(&["--privileged", "img"])),
        "docker-cgroup-rule" => c(
            "",
            init,
            launcher(&["--device-cgroup-rule", "c 195:* rwm", "img"]),
        ),
        "docker-no-image" => c("", init, s(&["--profile", "1g.10gb"])),
        "docker-bad-cli" => c(
            "",
            init,
            s(&["--profile", "1g.10gb", "--docker", "/nonexistent", "img"]),
        ),
        _ => return None,
    })
}

/// Every ordinary file under `dir` (symlinks as their target path), except lock files.
fn snapshot(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.insert(
                p.clone(),
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            );
        } else if ft.is_dir() {
            snapshot(&p, out);
        } else if ft.is_fifo() {
            // Reading a FIFO would wait for a writer; its presence is what counts.
            out.insert(p.clone(), b"<fifo>".to_vec());
        } else if !p.to_string_lossy().ends_with(".lock")
            && !p.ends_with("migrun.log")
            // Accounting, like the log: a refusal is counted (metrics) and recorded (usage ledger).
            && !p.ends_with("counters.json")
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ledger.jsonl"))
        {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

#[test]
fn every_documented_bad_input_fails_cleanly_and_leaves_nothing() {
    let rows = doc_rows();
    assert!(rows.len() >= 30, "docs/bad-inputs.md lost its table?");
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert!(seen.insert(row.id.clone()), "duplicate row {}", row.id);
        let sim = Sim::new("h100-80gb:2");
        let c = case(&row.id, &sim).unwrap_or_else(|| {
            panic!(
                "docs/bad-inputs.md row {} has no case in tests/bad_inputs.rs",
                row.id
            )
        });
        std::fs::write(sim.config_path(), c.config).unwrap();
        (c.setup)(&sim);
        let mut before = BTreeMap::new();
        snapshot(sim.tmp.path(), &mut before);

        let mut cmd = sim.cmd(&c.args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.envs(c.env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run migrun");
        // A command refused before it reads stdin (the sudo rows) closes it: that is not a failure.
        if let Err(e) = child.stdin.take().unwrap().write_all(&c.stdin) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{}: {e}", row.id);
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(row.exit), "{}: {err}", row.id);
        assert!(
            err.contains(&row.message),
            "{}: stderr {err:?} lacks the documented {:?}",
            row.id,
            row.message
        );

        let mut after = BTreeMap::new();
        snapshot(sim.tmp.path(), &mut after);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{}: files created or removed",
            row.id
        );
        for (p, b) in &before {
            assert!(after[p] == *b, "{}: {} changed", row.id, p.display());
        }
    }
    // Every case in the table is documented (a case without a row is dead weight or an undocumented input).
    let known = [
        "cli-unknown-profile",
        "cli-bad-profile",
        "cli-profile-and-min-mem",
        "cli-nothing-asked",
        "cli-bad-gpu",
        "cli-bad-size",
        "cli-bad-wait",
        "cli-unknown-lease",
        "cli-bad-simulate",
        "cli-too-big",
        "cli-not-a-command",
        "cli-not-a-command-plural",
        "cli-command-after-launcher-flags",
        "cli-near-miss-flag",
        "cli-profile-near-miss",
        "cli-profile-no-dot",
        "cli-dry-run-no-toolkit",
        "cli-non-ascii-lease",
        "cli-bad-slurm-step",
        "cli-slurm-step-and-holder-pid",
        "cli-handover-without-holder",
        "cli-handover-without-json",
        "sudo-handover",
        "cli-handback-not-an-id",
        "sudo-handback",
        "shim-wrong-handover",
        "mig-disable-pending",
        "cfg-unknown-key",
        "cfg-bad-type",
        "cfg-bad-release",
        "cfg-bad-release-wait",
        "cfg-bad-keep-idle",
        "cfg-bad-warm",
        "cli-bad-sim-latency",
        "cfg-missing-file",
        "cfg-bad-allowed-profile",
        "cfg-ledger-relative",
        "cfg-ledger-rotate-tiny",
        "usage-bad-since",
        "ledger-symlink",
        "cdi-toolkit-wrong-kind",
        "cdi-toolkit-missing",
        "cdi-dir-not-a-dir",
        "cdi-name-bad-chars",
        "cdi-name-lease-id",
        "cdi-name-mig-uuid",
        "cdi-name-edge",
        "cdi-name-taken",
        "policy-profile",
        "policy-ci-profile",
        "cfg-bad-allowed-ci-profile",
        "ci-unknown-profile",
        "ci-too-many-slices",
        "policy-gpu",
        "policy-per-user",
        "policy-total",
        "sudo-state-dir",
        "sudo-hook",
        "sudo-teardown",
        "sudo-slurm-step",
        "sudo-mig",
        "sudo-refill-warm",
        "dir-symlink",
        "dir-world-writable",
        "dir-wrong-owner",
        "dir-not-a-dir",
        "dir-trailing-slash",
        "dir-open-subdir",
        "dir-other-backend",
        "lease-symlink",
        "lease-garbage",
        "lease-fifo",
        "lease-too-big",
        "lease-path-uuid",
        "hook-empty-stdin",
        "hook-bad-json",
        "hook-bad-stage",
        "shim-no-bundle",
        "shim-bad-profile",
        "shim-bad-config",
        "hook-foreign-lease",
        "hook-posing-as-podman",
        "shim-unreadable-args",
        "shim-log-symlink",
        "docker-visible-devices",
        "docker-mig-config",
        "docker-mig-monitor",
        "docker-gpus",
        "docker-cdi-device",
        "docker-cdi-migrun-device",
        "docker-device-spelled",
        "docker-device-dev",
        "docker-device-symlink",
        "docker-bind-dev",
        "docker-mount-caps",
        "docker-privileged",
        "docker-cgroup-rule",
        "docker-env-file-fifo",
        "docker-env-file-cr",
        "docker-no-image",
        "docker-bad-cli",
    ];
    let sim = Sim::new("h100-80gb");
    for id in known {
        assert!(case(id, &sim).is_some(), "{id} listed but has no case");
        assert!(
            seen.contains(id),
            "tests/bad_inputs.rs case {id} has no row in docs/bad-inputs.md"
        );
    }
    assert_eq!(
        seen.len(),
        known.len(),
        "rows without a case were caught above"
    );
    let _ = BIN;
}
