//! Attacks on the docker launcher, each performed against the private dockerd on a simulated H100 with `--inject env`:
//! device nodes smuggled past the option check (spelling, symlinks, `mknod` copies, bind mounts, `--volumes-from`,
//! `--privileged`, `--device-cgroup-rule`), env files that change between the check and docker (a FIFO, a rewrite, a
//! CR line), and a launcher killed before docker names its container (gc must not free the slice under it). Needs
//! root and the engines from scripts/setup-test-host.sh; fails (never skips) without them.

mod common;
mod launcher_support;

use common::engines;
use launcher_support::*;
use std::time::Duration;

/// Run the launcher with `opts` before `IMAGE true` and expect a one-line refusal naming `option`, with nothing held.
fn assert_refused(w: &World, opts: &[&str], option: &str) {
    let mut args = vec!["--rm"];
    args.extend_from_slice(opts);
    args.extend([w.image.as_str(), "true"]);
    let out = engines::run_output(&mut w.launch("3g.40gb", &args));
    assert_eq!(out.status.code(), Some(2), "{opts:?}: {}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("migrun: refusing {option}")),
        "{opts:?}: {err}"
    );
    assert!(err.contains("cannot choose its own GPU"), "{opts:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    w.assert_clean(&format!("after refusing {opts:?}"));
}

#[test]
fn device_nodes_cannot_be_smuggled_in_by_spelling_links_copies_or_mounts() {
    let w = World::new();
    let t = w.tmp.path();
    // This host has no NVIDIA driver: the nodes these name do not exist, which the check must not need.
    let dangling = t.join("x");
    std::os::unix::fs::symlink("/dev/nvidia0", &dangling).unwrap();
    let devlink = t.join("devlink");
    std::os::unix::fs::symlink("/dev", &devlink).unwrap();
    // A copy of /dev/nvidia0 made with mknod (a container with CAP_MKNOD can make one in a bind-mounted dir).
    let copies = t.join("copies");
    std::fs::create_dir(&copies).unwrap();
    let copy = copies.join("gpu0");
    nix::sys::stat::mknod(
        &copy,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(195, 0),
    )
    .unwrap();
    let (dangling, devlink, copies, copy) = (
        dangling.display().to_string(),
        devlink.display().to_string(),
        copies.display().to_string(),
        copy.display().to_string(),
    );
    let bind = |src: &str| format!("type=bind,src={src},dst=/x");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--device".into(), "/dev/./nvidia0".into()], "--device"),
        (vec!["--device".into(), "//dev/nvidia0".into()], "--device"),
        (vec!["--device=/dev/../dev/nvidia0".into()], "--device"),
        (vec!["--device".into(), "/dev/".into()], "--device"),
        (vec!["--device".into(), dangling.clone()], "--device"),
        (
            vec![
                "--device".into(),
                format!("{devlink}/nvidia-caps/nvidia-cap1"),
            ],
            "--device",
        ),
        (vec!["--device".into(), copy.clone()], "--device"),
        (vec!["--device".into(), copies.clone()], "--device"),
        (vec!["--mount".into(), bind("/dev/nvidia0")], "--mount"),
        (
            vec![
                "--mount".into(),
                "type=bind,source=/dev/nvidia0,target=/x".into(),
            ],
            "--mount",
        ),
        (vec!["--mount".into(), bind(&devlink)], "--mount"),
        (vec!["--mount".into(), bind(&copy)], "--mount"),
        (
            vec![
                "--mount".into(),
                "type=volume,dst=/x,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/dev"
                    .into(),
            ],
            "--mount",
        ),
        (vec!["-v".into(), "/dev:/dev".into()], "-v"),
        (vec!["-v".into(), "/dev/nvidia-caps:/x".into()], "-v"),
        (vec!["--volume".into(), "/:/host:ro".into()], "--volume"),
        (
            vec!["--volume".into(), format!("{dangling}:/dev/nvidia0")],
            "--volume",
        ),
        (
            vec!["--device-cgroup-rule".into(), "c 195:* rwm".into()],
            "--device-cgroup-rule",
        ),
        (vec!["--privileged".into()], "--privileged"),
    ];
    for (opts, option) in &cases {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        assert_refused(&w, &opts, option);
    }

    // --volumes-from takes another container's mounts: one that binds /dev is refused, one that does not is fine.
    let name = engines::unique_name("migrun-devs");
    engines::run_ok(w.docker().args([
        "create",
        "--name",
        &name,
        "-v",
        "/dev:/hostdev",
        &w.image,
        "true",
    ]));
    assert_refused(&w, &["--volumes-from", &name], "--volumes-from");
    engines::run_ok(w.docker().args(["rm", "-f", &name]));

    // What the check must still let through runs, and the container gets what it asked for.
    let data = t.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "data\n").unwrap();
    let volume = format!("{}:/data:ro", data.display());
    let out = engines::run_output(&mut w.launch(
        "3g.40gb",
        &[
            "--rm",
            "--privileged=false",
            "--device",
            "/dev/null:/dev/mynull",
            "-v",
            &volume,
            "--mount",
            "type=tmpfs,dst=/scratch",
            &w.image,
            "sh",
            "-c",
            "test -c /dev/mynull && cat /data/f && echo $NVIDIA_VISIBLE_DEVICES",
        ],
    ));
    assert!(out.status.success(), "{}", show(&out));
    let so = text(&out.stdout);
    assert!(so.starts_with("data\nMIG-"), "{so}");
    wait_for("nothing held", Duration::from_secs(5), || {
        w.leases().is_empty()
    });
    w.assert_clean("after the allowed run");
}

/// A `--docker` wrapper that runs `before` (shell), then the real docker CLI with migrun's arguments.
fn docker_wrapper(w: &World, name: &str, before: &str) -> std::path::PathBuf {
    let path = w.tmp.path().join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{before}\nexec {} \"$@\"\n",
            engines::docker_cli().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn env_files_are_read_once_and_docker_gets_what_was_checked() {
    let w = World::new();
    let t = w.tmp.path();

    // A FIFO that tells its first reader (the check) something harmless and its second (docker) the device
    // variables. migrun must neither read it nor hang on it.
    let fifo = t.join("fifo.env");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"printf 'A=1\n' > "$0"; printf 'NVIDIA_VISIBLE_DEVICES=all\nNVIDIA_MIG_CONFIG_DEVICES=all\n' > "$0""#)
        .arg(&fifo)
        .spawn()
        .unwrap();
    let fifo_s = fifo.display().to_string();
    let mut child = w
        .launch("3g.40gb", &["--rm", "--env-file", &fifo_s, &w.image, "env"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(&mut child, Duration::from_secs(30));
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "migrun: refusing --env-file {fifo_s}: it is a FIFO, not a regular file"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    w.assert_clean("after refusing a FIFO env file");

    // A file rewritten after migrun checked it (here by the docker wrapper, just before the real CLI starts): docker
    // reads migrun's private copy of what was checked, CRLF endings and all, never the file again.
    let env = t.join("checked.env");
    std::fs::write(&env, "A=1\r\nB=2\r\n").unwrap();
    let env_s = env.display().to_string();
    let rewrite = docker_wrapper(
        &w,
        "rewriting-docker",
        &format!("printf 'NVIDIA_MIG_CONFIG_DEVICES=all\\nB=rewritten\\n' > {env_s}"),
    );
    let out = engines::run_output(
        w.migrun()
            .env("MIGRUN_DOCKER", &rewrite)
            .args(["-v", "--profile", "3g.40gb", "--inject", "env"])
            .args(["--pull", "never", "--rm", "--env-file", &env_s, &w.image])
            .args([
                "sh",
                "-c",
                r#"echo "A=$A B=$B M=${NVIDIA_MIG_CONFIG_DEVICES-unset}""#,
            ]),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout), "A=1 B=2 M=unset\n", "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "NVIDIA_MIG_CONFIG_DEVICES=all\nB=rewritten\n",
        "the wrapper did rewrite the file"
    );
    let err = text(&out.stderr);
    let command = err
        .lines()
        .find(|l| l.contains(" run ") && l.contains("--env-file"))
        .unwrap_or_else(|| panic!("no docker command in -v output: {err}"));
    assert!(
        !command.contains(&env_s) && command.contains("/env-file-1"),
        "docker was handed the user's file: {command}"
    );
    w.assert_clean("after the rewritten env file");

    // A bare name on a last line ending in CR: docker's CLI drops the CR and copies the variable from its own
    // environment (shown here with the real CLI), so migrun must see the same name.
    let cr = t.join("cr.env");
    std::fs::write(&cr, "A=1\r\nNVIDIA_VISIBLE_DEVICES\r").unwrap();
    let cr_s = cr.display().to_string();
    let plain = engines::run_ok(
        w.docker()
            .env("NVIDIA_VISIBLE_DEVICES", "all")
            .args(["run", "--rm", "--pull", "never", "--env-file", &cr_s])
            .args([&w.image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert_eq!(plain.trim(), "all", "docker's own reading of the CR line");
    let out = engines::run_output(
        w.launch("3g.40gb", &["--rm", "--env-file", &cr_s, &w.image, "true"])
            .env("NVIDIA_VISIBLE_DEVICES", "all"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "migrun: refusing NVIDIA_VISIBLE_DEVICES in --env-file {cr_s} (line 2)"
        )),
        "{err}"
    );
    w.assert_clean("after refusing the CR line");
}

#[test]
fn a_launcher_killed_before_the_cidfile_leaves_the_slice_to_docker_and_its_container() {
    let w = World::new();
    // A docker CLI that takes its time before it reaches the daemon, as one pulling a large image does.
    let slow = docker_wrapper(&w, "slow-docker", r#"case "$1" in run) sleep 5;; esac"#);
    let name = engines::unique_name("migrun-slow");
    let mut launcher = w
        .migrun()
        .env("MIGRUN_DOCKER", &slow)
        .args(["--profile", "3g.40gb", "--inject", "env", "--pull", "never"])
        .args(["--init", "--name", &name, &w.image, "sleep", "100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The lease names the docker client before docker may run (it waits behind migrun's gate until then).
    wait_for(
        "the lease records the docker client",
        Duration::from_secs(30),
        || {
            w.leases().first().is_some_and(|l| {
                l["holder"]["kind"] == "launcher" && l["holder"]["client"].is_array()
            })
        },
    );
    let lease = w.leases()[0].clone();
    let client = lease["holder"]["client"][0].as_u64().unwrap() as i32;
    assert_eq!(lease["holder"]["pid"], launcher.id());
    launcher.kill().unwrap(); // SIGKILL: no release, no handover to the container
    launcher.wait().unwrap();
    assert_eq!(
        w.container_state(&name),
        None,
        "the launcher was to die before docker created the container"
    );

    let gc = || {
        let out = engines::run_output(w.migrun().arg("gc"));
        assert!(out.status.success(), "{}", show(&out));
    };
    gc();
    assert_eq!(
        w.leases().len(),
        1,
        "gc freed the slice while the docker client still runs"
    );

    // docker goes on to start the container with the leased device.
    wait_for("the container runs", Duration::from_secs(30), || {
        w.container_state(&name).as_deref() == Some("running")
    });
    let seen =
        engines::run_ok(
            w.docker()
                .args(["exec", &name, "printenv", "NVIDIA_VISIBLE_DEVICES"]),
        );
    assert_eq!(seen.trim(), lease["mig_uuid"].as_str().unwrap());
    gc();
    assert_eq!(w.leases().len(), 1, "gc freed a running container's slice");

    // Without the docker client too, the container's migrun.launch label is what keeps the slice.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the docker client is gone", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{client}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    });
    assert_eq!(w.container_state(&name).as_deref(), Some("running"));
    gc();
    let left = w.leases();
    assert_eq!(left.len(), 1, "gc freed a running container's slice");
    assert_eq!(left[0]["id"], lease["id"]);

    engines::run_ok(w.docker().args(["rm", "-f", &name]));
    gc();
    w.assert_clean("after the container is removed and gc ran");
}
