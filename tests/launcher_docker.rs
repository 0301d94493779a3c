//! The docker launcher against a real (private) dockerd: the container gets the leased MIG UUID, the slice is released
//! on every path (exit, docker failure, SIGTERM, `-d` + `docker stop`, `kill -9` + gc), device choices are refused.
//! GPUs are simulated (`--simulate`), or reached through migrun's real NVML code and the fake libnvidia-ml; the device
//! goes in with `--inject env`. Needs root and the engines from scripts/setup-test-host.sh; fails (never skips)
//! without them.

mod common;
mod launcher_support;

use common::engines;
use common::fake_nvml::FakeNvml;
use launcher_support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn container_gets_the_leased_uuid_and_the_slice_is_released() {
    let w = World::new();
    // --keep leaves the instance in place, so its UUID can be compared with what the container saw.
    let out = engines::run_output(w.migrun().args([
        "--profile",
        "3g.40gb",
        "--keep",
        "--inject",
        "env",
        "--rm",
        "--pull",
        "never",
        &w.image,
        "sh",
        "-c",
        "echo $NVIDIA_VISIBLE_DEVICES",
    ]));
    assert!(out.status.success(), "{}", show(&out));
    let seen = text(&out.stdout).trim().to_string();
    assert!(is_mig_uuid(&seen), "container saw {seen:?}");
    let inst = w.instances();
    assert_eq!(inst.len(), 1, "{inst:?}");
    assert_eq!(inst[0]["mig_uuid"], seen.as_str());
    assert_eq!(inst[0]["profile"], "3g.40gb");
    assert!(
        w.leases().is_empty(),
        "lease left after exit: {:?}",
        w.leases()
    );

    // Without --keep the next run reuses nothing it must not, and destroys what it created.
    let out = engines::run_output(&mut w.launch(
        "1g.10gb",
        &["--rm", &w.image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"],
    ));
    assert!(out.status.success(), "{}", show(&out));
    let seen2 = text(&out.stdout).trim().to_string();
    assert!(is_mig_uuid(&seen2) && seen2 != seen, "{seen2:?}");
    let inst = w.settled_instances();
    assert_eq!(inst.len(), 1, "only the kept 3g.40gb remains: {inst:?}");
    assert_eq!(inst[0]["mig_uuid"], seen.as_str());
    assert!(w.leases().is_empty());
}

#[test]
fn the_end_of_the_container_is_read_from_the_daemon_socket_only_when_it_is_the_clis() {
    let w = World::new();
    // DOCKER_HOST names the daemon's socket: migrun asks it directly once it has seen the container there.
    // `migrun -v --profile 1g.10gb --inject env --pull never --rm IMAGE CMD…`, verbose so it says how it judged.
    let verbose_run = |c: &mut Command, cmd: &[&str]| {
        c.args(["-v", "--profile", "1g.10gb", "--inject", "env"])
            .args(["--pull", "never", "--rm", &w.image])
            .args(cmd);
        engines::run_output(c)
    };
    let out = verbose_run(&mut w.migrun(), &["true"]);
    assert!(out.status.success(), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(err.contains("docker's API socket knows container"), "{err}");
    w.assert_clean("after a run judged over the socket");

    // A wrapper CLI that talks to the daemon by itself (as a context or a shim would): the socket migrun would
    // guess (the default one, or none) never saw the container, so migrun asks the CLI, and still releases.
    let bin = w.tmp.path().join("wrapper");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("docker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -H {} \"$@\"\n",
            engines::docker_cli().display(),
            w.docker.host()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut c = w.migrun();
    c.env_remove("DOCKER_HOST").env("MIGRUN_DOCKER", &wrapper);
    let out = verbose_run(&mut c, &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        !err.contains("docker's API socket knows container"),
        "{err}"
    );
    assert!(err.contains("released"), "{err}");
    w.assert_clean("after a run judged through the CLI");
}

#[test]
fn exit_code_of_the_container_is_migruns() {
    let w = World::new();
    let out =
        engines::run_output(&mut w.launch("3g.40gb", &["--rm", &w.image, "sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    w.assert_clean("after exit 7");
}

#[test]
fn docker_failures_keep_dockers_code_and_release() {
    let w = World::new();
    let out = engines::run_output(
        &mut w.launch("3g.40gb", &["--rm", "migrun-test/no-such-image:1", "true"]),
    );
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    w.assert_clean("after a missing image");

    // A command that does not exist in the image: docker's 127, after the container was created.
    let out =
        engines::run_output(&mut w.launch("3g.40gb", &["--rm", &w.image, "/no/such/command"]));
    assert_eq!(out.status.code(), Some(127), "{}", show(&out));
    w.assert_clean("after a missing command");
}

#[test]
fn sigterm_stops_the_container_and_releases() {
    let w = World::new();
    let name = engines::unique_name("migrun-term");
    let mut child = w
        .launch(
            "3g.40gb",
            &["--rm", "--init", "--name", &name, &w.image, "sleep", "100"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the container runs", Duration::from_secs(30), || {
        w.container_state(&name).as_deref() == Some("running")
    });
    let held = w.leases();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["holder"]["kind"], "container", "{held:?}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait_output(&mut child, Duration::from_secs(30));
    // tini passes SIGTERM to sleep, which dies of it: 128 + 15.
    assert_eq!(out.status.code(), Some(143), "{}", show(&out));
    assert_eq!(w.container_state(&name), None, "container still there");
    w.assert_clean("after SIGTERM");
}

#[test]
fn detached_container_is_released_after_docker_stop() {
    let w = World::new();
    let out = engines::run_output(&mut w.launch(
        "3g.40gb",
        &["-d", "--rm", "--init", &w.image, "sleep", "100"],
    ));
    assert!(out.status.success(), "{}", show(&out));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(
        id.len(),
        64,
        "docker -d prints the container id: {}",
        show(&out)
    );
    assert_eq!(w.container_state(&id).as_deref(), Some("running"));

    let held = w.leases();
    assert_eq!(held.len(), 1, "{held:?}");
    let lease = &held[0];
    assert_eq!(lease["holder"]["kind"], "container", "{lease}");
    assert_eq!(lease["holder"]["id"], id.as_str());
    // The labels name the lease, and the container got the leased device.
    let labels: Value = serde_json::from_str(&engines::run_ok(w.docker().args([
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &id,
    ])))
    .unwrap();
    assert_eq!(labels["migrun.uuid"], lease["mig_uuid"]);
    assert_eq!(labels["migrun.profile"], "3g.40gb");
    assert_eq!(labels["migrun.lease"], lease["id"].to_string().as_str());
    let env = engines::run_ok(
        w.docker()
            .args(["exec", &id, "printenv", "NVIDIA_VISIBLE_DEVICES"]),
    );
    assert_eq!(env.trim(), lease["mig_uuid"].as_str().unwrap());

    engines::run_ok(w.docker().args(["stop", "-t", "1", &id]));
    wait_for(
        "the watcher releases the slice after docker stop",
        Duration::from_secs(20),
        || w.leases().is_empty(),
    );
    w.assert_clean("after docker stop");
}

#[test]
fn two_launchers_at_once_get_different_slices() {
    let w = World::new();
    let spawn = || {
        w.launch(
            "3g.40gb",
            &[
                "--rm",
                &w.image,
                "sh",
                "-c",
                "echo $NVIDIA_VISIBLE_DEVICES; sleep 1",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let (oa, ob) = (
        wait_output(&mut a, Duration::from_secs(60)),
        wait_output(&mut b, Duration::from_secs(60)),
    );
    assert!(oa.status.success(), "{}", show(&oa));
    assert!(ob.status.success(), "{}", show(&ob));
    let (ua, ub) = (text(&oa.stdout), text(&ob.stdout));
    assert!(
        is_mig_uuid(ua.trim()) && is_mig_uuid(ub.trim()),
        "{ua:?} {ub:?}"
    );
    assert_ne!(ua.trim(), ub.trim(), "both got the same slice");
    w.assert_clean("after both");
}

#[test]
fn killed_launcher_leaves_the_lease_to_the_container_until_it_is_gone() {
    let w = World::new();
    let name = engines::unique_name("migrun-kill9");
    let mut child = w
        .launch(
            "3g.40gb",
            &["--init", "--name", &name, &w.image, "sleep", "100"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the lease is handed to the container",
        Duration::from_secs(30),
        || {
            w.leases()
                .first()
                .is_some_and(|l| l["holder"]["kind"] == "container")
        },
    );
    child.kill().unwrap(); // SIGKILL: no release from migrun itself
    child.wait().unwrap();
    assert_eq!(w.container_state(&name).as_deref(), Some("running"));

    let gc = engines::run_output(w.migrun().arg("gc"));
    assert!(gc.status.success(), "{}", show(&gc));
    assert_eq!(w.leases().len(), 1, "gc freed a slice whose container runs");

    engines::run_ok(w.docker().args(["rm", "-f", &name]));
    let gc = engines::run_output(w.migrun().arg("gc"));
    assert!(gc.status.success(), "{}", show(&gc));
    w.assert_clean("after the container is gone and gc ran");
}

#[test]
fn device_choices_are_refused_and_nothing_is_held() {
    let w = World::new();
    let env_file = w.tmp.path().join("env");
    std::fs::write(&env_file, "A=1\nNVIDIA_VISIBLE_DEVICES=all\n").unwrap();
    let env_file = env_file.display().to_string();
    let cases: &[&[&str]] = &[
        &["-e", "NVIDIA_VISIBLE_DEVICES=all"],
        &["--env=NVIDIA_MIG_CONFIG_DEVICES=all"],
        &["--env-file", &env_file],
        &["--gpus", "all"],
        &["--device", "nvidia.com/gpu=0"],
    ];
    for opts in cases {
        let mut args = vec!["--rm"];
        args.extend_from_slice(opts);
        args.extend([w.image.as_str(), "true"]);
        let out = engines::run_output(&mut w.launch("3g.40gb", &args));
        assert_eq!(out.status.code(), Some(2), "{opts:?}: {}", show(&out));
        let err = text(&out.stderr);
        assert!(err.contains("cannot choose its own GPU"), "{opts:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
        w.assert_clean(&format!("after refusing {opts:?}"));
    }
}

#[test]
fn without_a_toolkit_it_refuses_instead_of_running_without_the_gpu() {
    let w = World::new();
    for d in ["/etc/cdi", "/var/run/cdi"] {
        assert!(
            !Path::new(d).join("nvidia.yaml").exists(),
            "this test needs a host without an NVIDIA CDI spec ({d})"
        );
    }
    // PATH without any nvidia-container-* binary (only the docker CLI, via MIGRUN_DOCKER).
    let out = engines::run_output(w.migrun().env("PATH", "/usr/bin:/bin").args([
        "--profile",
        "3g.40gb",
        "--rm",
        "--pull",
        "never",
        &w.image,
        "true",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("no NVIDIA container toolkit") && err.contains("--inject env"),
        "{err}"
    );
    w.assert_clean("after refusing");
}

#[test]
fn dry_run_prints_the_plan_and_the_command_and_changes_nothing() {
    let w = World::new();
    // A stand-in nvidia-container-runtime-hook on PATH: detection must choose docker's --gpus.
    let bin = w.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let hook = bin.join("nvidia-container-runtime-hook");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = w.status();
    let out = engines::run_output(
        w.migrun()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .args([
                "-v",
                "--profile",
                "3g.40gb",
                "--dry-run",
                "-it",
                "--rm",
                "-p",
                "8888:8888",
            ])
            .args([&w.image, "sh", "-c", "echo hi"]),
    );
    assert!(out.status.success(), "{}", show(&out));
    let so = text(&out.stdout);
    assert!(so.contains("plan: create 3g.40gb"), "{so}");
    assert!(so.contains("on GPU 0"), "{so}");
    let cmd = so
        .lines()
        .find_map(|l| l.strip_prefix("command: "))
        .unwrap_or_else(|| panic!("no command line: {so}"));
    assert!(
        cmd.contains(" run -it --rm -p 8888:8888 --cidfile ")
            && cmd.contains("--gpus 'device=<MIG-")
            && cmd.ends_with(&format!("{} sh -c 'echo hi'", w.image)),
        "{cmd}"
    );
    assert!(
        text(&out.stderr).contains("--inject gpus"),
        "verbose names the mode: {}",
        show(&out)
    );
    assert_eq!(w.status(), before, "dry run changed the machine");
}

#[test]
fn published_port_answers_like_a_notebook_server_would() {
    // The Jupyter example, with busybox httpd standing in for the notebook server.
    let w = World::new();
    let port = engines::free_tcp_port();
    let work = w.tmp.path().join("notebooks");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("hello.ipynb"), "{\"cells\": []}\n").unwrap();
    let name = engines::unique_name("migrun-nb");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jupyter-on-a-slice/run.sh");
    let example = |action: &str| {
        let mut c = Command::new("bash");
        w.env(&mut c);
        c.arg(&script)
            .arg(action)
            .env("MIGRUN", MIGRUN)
            .env("MIGRUN_INJECT", "env")
            .env("DOCKER", engines::docker_cli())
            .env("IMAGE", &w.image)
            .env("NAME", &name)
            .env("PORT", port.to_string())
            .env("WORKDIR", &work)
            .env("NOTEBOOK_DIR", "/www")
            .env("DOCKER_EXTRA", "--pull never")
            .env("NOTEBOOK_CMD", "httpd -f -p 8888 -h /www");
        c
    };
    let out = engines::run_output(&mut example("start"));
    assert!(out.status.success(), "{}", show(&out));
    let so = text(&out.stdout);
    assert!(so.contains("3g.40gb"), "status shows the slice: {so}");
    let held = w.leases();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["profile"], "3g.40gb");
    let body = engines::http_get(port, "/hello.ipynb", Duration::from_secs(20));
    assert_eq!(
        body, "{\"cells\": []}\n",
        "the volume is served through the published port"
    );

    let out = engines::run_output(&mut example("stop"));
    assert!(out.status.success(), "{}", show(&out));
    wait_for(
        "the slice is freed after docker stop",
        Duration::from_secs(20),
        || w.leases().is_empty(),
    );
    w.assert_clean("after stopping the notebook");
}

#[test]
fn through_the_real_nvml_code_and_the_fake_driver() {
    let w = World::with(Gpus::Fake(FakeNvml::new("h100-80gb:2")));
    let Gpus::Fake(fake) = &w.gpus else {
        unreachable!()
    };
    let out = engines::run_output(&mut w.launch(
        "2g.20gb",
        &[
            "--rm",
            &w.image,
            "sh",
            "-c",
            "echo $NVIDIA_VISIBLE_DEVICES; exit 3",
        ],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let seen = text(&out.stdout).trim().to_string();
    assert!(is_mig_uuid(&seen), "container saw {seen:?}");
    // The instance existed on the (fake) device and is gone from it again: created and destroyed through NVML.
    // The launcher returns before the background destroy has run (`release_wait_ms` is 0 by default): wait for it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (0..2).any(|g| !fake.machine().instances(g).unwrap().is_empty())
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let machine = fake.machine();
    for gpu in 0..2 {
        assert!(
            machine.instances(gpu).unwrap().is_empty(),
            "GPU {gpu} still has instances"
        );
    }
    w.assert_clean("after a run through the fake NVML");

    // With --keep the instance stays, and NVML reports the UUID the container saw.
    let mut keep = w.migrun();
    keep.args([
        "--profile",
        "1g.10gb",
        "--keep",
        "--inject",
        "env",
        "--rm",
        "--pull",
        "never",
    ])
    .args([&w.image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]);
    let out = engines::run_output(&mut keep);
    assert!(out.status.success(), "{}", show(&out));
    let kept = text(&out.stdout).trim().to_string();
    let on_device: Vec<String> = fake
        .machine()
        .instances(0)
        .unwrap()
        .iter()
        .chain(fake.machine().instances(1).unwrap().iter())
        .filter_map(|i| i.mig_uuid().map(String::from))
        .collect();
    assert_eq!(
        on_device,
        vec![kept],
        "exactly the kept 1g.10gb remains on the device"
    );
}

#[test]
fn ctrl_c_in_a_terminal_reaches_the_container_once() {
    // `script` gives migrun a terminal; writing ^C to it makes the kernel send SIGINT to the foreground process
    // group (migrun and docker). docker passes it on; migrun must not pass it on a second time.
    let script = engines::require("script");
    let w = World::new();
    let name = engines::unique_name("migrun-ctrlc");
    let body = "n=0; trap 'n=$((n+1)); echo got INT $n' INT; i=0; \
                while [ $n -eq 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                sleep 1; echo done n=$n";
    let words: Vec<String> = [
        MIGRUN,
        "--profile",
        "3g.40gb",
        "--inject",
        "env",
        "--pull",
        "never",
        "--rm",
        "--name",
        &name,
        &w.image,
        "sh",
        "-c",
        body,
    ]
    .iter()
    .map(|s| format!("'{}'", s.replace('\'', r"'\''")))
    .collect();
    let mut c = Command::new(script);
    w.env(&mut c);
    let mut child = c
        .args(["-qec", &words.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the container runs", Duration::from_secs(30), || {
        w.container_state(&name).as_deref() == Some("running")
    });
    std::thread::sleep(Duration::from_millis(300)); // let the trap be set
    use std::io::Write;
    let mut tty = child.stdin.take().unwrap();
    tty.write_all(b"\x03").unwrap();
    tty.flush().unwrap();
    let out = wait_output(&mut child, Duration::from_secs(30));
    drop(tty);
    let so = text(&out.stdout);
    assert!(
        so.contains("got INT 1") && so.contains("done n=1"),
        "{}",
        show(&out)
    );
    assert!(
        !so.contains("got INT 2"),
        "SIGINT reached the container twice: {so}"
    );
    w.assert_clean("after Ctrl-C");
}

/// Compute-instance slices (issue 22) through the launcher: two `migrun --profile 1c.3g.40gb` at once on an
/// A100 80GB run in one GPU instance, each container with its own compute instance's MIG UUID; when both
/// end, the GPU instance is gone too.
#[test]
fn two_launchers_share_one_gpu_instance_with_compute_instance_slices() {
    let w = World::with(Gpus::Sim("a100-80gb:1"));
    let spawn = || {
        w.launch(
            "1c.3g.40gb",
            &[
                "--rm",
                &w.image,
                "sh",
                "-c",
                "echo $NVIDIA_VISIBLE_DEVICES; sleep 3",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    // While both run: two leases of one GPU instance.
    let t0 = std::time::Instant::now();
    let mut shared = None;
    while t0.elapsed() < Duration::from_secs(30) && shared.is_none() {
        let leases = w.leases();
        if leases.len() == 2 {
            shared = Some((leases[0]["gi"].clone(), leases[1]["gi"].clone()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (oa, ob) = (
        wait_output(&mut a, Duration::from_secs(60)),
        wait_output(&mut b, Duration::from_secs(60)),
    );
    assert!(oa.status.success(), "{}", show(&oa));
    assert!(ob.status.success(), "{}", show(&ob));
    let (gi_a, gi_b) = shared.expect("both containers held a lease at once");
    assert_eq!(gi_a, gi_b, "one GPU instance");
    let (ua, ub) = (text(&oa.stdout), text(&ob.stdout));
    assert!(
        is_mig_uuid(ua.trim()) && is_mig_uuid(ub.trim()),
        "{ua:?} {ub:?}"
    );
    assert_ne!(ua.trim(), ub.trim(), "each has its own compute instance");
    w.assert_clean("after both");
}
