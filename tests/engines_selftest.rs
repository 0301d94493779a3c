//! Self-test of the real-engine test harness (tests/common/engines.rs): every engine the
//! integration tests rely on must really work on this host. Needs root and the packages from
//! scripts/setup-test-host.sh; fails (never skips) otherwise.

mod common;

use common::engines::{self, PrivateDockerd};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A runc-compatible "runtime shim": logs its arguments to `log`, then execs the real runc.
fn logging_runc_shim(dir: &Path, log: &Path) -> PathBuf {
    let shim = dir.join("logging-runc");
    let runc = engines::require("runc");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            runc.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

#[test]
fn docker_runs_busybox() {
    let docker = engines::shared_dockerd();
    let image = engines::busybox_image(docker);
    let out = engines::run_output(docker.run_cmd().arg(&image).args(["echo", "hi"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // No daemon warnings (e.g. "IPv4 forwarding is disabled") on stderr.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let env = engines::run_ok(
        docker
            .run_cmd()
            .args(["-e", "MIGRUN_X=1"])
            .arg(&image)
            .arg("printenv"),
    );
    assert!(env.contains("MIGRUN_X=1\n"), "{env}");
    assert!(
        env.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{env}"
    );
}

#[test]
fn docker_published_port_serves_http() {
    let docker = engines::shared_dockerd();
    let image = engines::busybox_image(docker);
    let port = engines::free_tcp_port();
    let name = engines::unique_name("httpd");
    let id = engines::run_ok(
        docker
            .run_cmd()
            .args(["-d", "--name", &name, "-p"])
            .arg(format!("127.0.0.1:{port}:80"))
            .arg(&image)
            .args(["httpd", "-f", "-p", "80", "-h", "/www"]),
    );
    assert!(!id.trim().is_empty());
    // The container sits on this daemon's private bridge, not on a system docker0.
    let ip = engines::run_ok(docker.docker_cmd().args([
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        &name,
    ]));
    assert!(ip.starts_with("10.213."), "container IP {ip:?}");
    let body = engines::http_get(port, "/index.html", Duration::from_secs(20));
    engines::run_ok(docker.docker_cmd().args(["rm", "-f", &name]));
    assert_eq!(body, engines::BUSYBOX_INDEX_HTML);
}

#[test]
fn docker_custom_runtime_and_cleanup() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("shim.log");
    let shim = logging_runc_shim(tmp.path(), &log);
    let docker = PrivateDockerd::start_with_runtimes(&[("migrun-test", &shim)]);
    let image = engines::busybox_image(&docker);
    let out = engines::run_ok(
        docker
            .run_cmd()
            .args(["--runtime", "migrun-test"])
            .arg(&image)
            .args(["echo", "via-shim"]),
    );
    assert_eq!(out, "via-shim\n");
    let calls = fs::read_to_string(&log).unwrap();
    assert!(calls.lines().any(|l| l.contains(" create ")), "{calls}");

    let dir = docker.dir().to_path_buf();
    let bridge = docker.bridge().to_string();
    drop(docker);
    assert!(!dir.exists(), "{dir:?} left behind");
    let needle = format!("{}/", dir.display());
    for p in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(p.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(&needle), "still running: {cmdline}");
        }
    }
    let links = engines::run_ok(std::process::Command::new("ip").args(["-o", "link"]));
    assert!(
        !links.contains(&format!(": {bridge}:")),
        "bridge {bridge} left"
    );
}

#[test]
fn runc_runs_bundle_with_prestart_hook() {
    let runc = engines::Runc::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = engines::busybox_bundle(&tmp.path().join("bundle"), &["echo", "hi-runc"]);
    let hook_out = tmp.path().join("hook.json");
    // runc gives hooks only hook.env (no PATH): use absolute paths.
    engines::patch_bundle_config(&bundle, |spec| {
        spec["hooks"] = serde_json::json!({"prestart": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("/bin/cat > '{}'", hook_out.display())],
        }]});
    });
    let id = engines::unique_name("runc");
    let out = engines::run_ok(&mut runc.run_cmd(&bundle, &id));
    assert_eq!(out, "hi-runc\n");
    let state = fs::read_to_string(&hook_out).unwrap();
    assert!(state.contains(&format!("\"id\":\"{id}\"")), "{state}");
    assert!(state.contains("\"status\":\"creating\""), "{state}");
}

#[test]
fn ctr_runs_busybox_with_custom_runc_binary() {
    let ctd = engines::shared_containerd();
    let out = engines::run_ok(&mut ctd.run_cmd(
        &engines::unique_name("ctr"),
        None,
        &[],
        &["echo", "hi-ctr"],
    ));
    assert_eq!(out, "hi-ctr\n");

    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("shim.log");
    let shim = logging_runc_shim(tmp.path(), &log);
    let out = engines::run_ok(&mut ctd.run_cmd(
        &engines::unique_name("ctr"),
        Some(&shim),
        &["--env", "MIGRUN_X=2"],
        &["printenv", "MIGRUN_X"],
    ));
    assert_eq!(out, "2\n");
    let calls = fs::read_to_string(&log).unwrap();
    assert!(calls.lines().any(|l| l.contains(" create ")), "{calls}");
}

#[test]
fn podman_runs_busybox_with_prestart_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks.d");
    fs::create_dir(&hooks).unwrap();
    let hook_out = tmp.path().join("hook.json");
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": "/bin/sh", "args": ["sh", "-c", format!("/bin/cat > '{}'", hook_out.display())]},
        "when": {"always": true},
        "stages": ["prestart"],
    });
    fs::write(hooks.join("00-selftest.json"), hook.to_string()).unwrap();
    let podman = engines::Podman::new().hooks_dir(&hooks);
    let image = podman.busybox_image();
    let out = engines::run_ok(podman.run_cmd().arg(&image).args(["echo", "hi-podman"]));
    assert_eq!(out, "hi-podman\n");
    let state = fs::read_to_string(&hook_out).unwrap();
    assert!(state.contains("\"status\":\"creating\""), "{state}");
}

#[test]
fn podman_uses_custom_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("shim.log");
    let shim = logging_runc_shim(tmp.path(), &log);
    let podman = engines::Podman::new().runtime(&shim);
    let image = podman.busybox_image();
    let out = engines::run_ok(podman.run_cmd().arg(&image).args(["echo", "via-shim"]));
    assert_eq!(out, "via-shim\n");
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == "create")),
        "{calls}"
    );
}
