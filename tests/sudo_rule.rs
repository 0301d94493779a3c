//! The documented sudoers rule, for real: an unprivileged user allowed `NOPASSWD:SETENV` on the migrun binary gets the
//! launcher, alloc and release, and nothing that points root at a program, library, file or directory of theirs.
//! Needs root, `sudo` and `runuser` (scripts/setup-test-host.sh installs sudo); it fails, never skips, without them.

mod alloc_support;

use alloc_support::BIN;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A system user made for this test (created when missing; nothing else uses it).
const USER: &str = "migrun-sudo-test";
/// A spec no other test simulates: under sudo the state dir is the spec's default one.
const SPEC: &str = "a100-80gb:1";

fn uid_of(user: &str) -> Option<u32> {
    let o = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The user, and a sudoers rule as docs/security.md documents it, for this build's binary. SETENV
/// models a permissive site: the user may pass variables, and migrun must refuse the dangerous ones.
fn setup() -> u32 {
    // Both tests of this binary run at once; the user and the rule are made once.
    static DONE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *DONE.get_or_init(make_user_and_rule)
}

fn make_user_and_rule() -> u32 {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (scripts/test.sh runs as root)"
    );
    for tool in ["sudo", "runuser", "visudo"] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        assert!(
            found,
            "{tool} is missing: install the sudo package (scripts/setup-test-host.sh does)"
        );
    }
    if uid_of(USER).is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", USER])
            .status()
            .unwrap();
        assert!(st.success() || uid_of(USER).is_some(), "useradd {USER}");
    }
    let rule = format!("{USER} ALL=(root) NOPASSWD:SETENV: {BIN}\n");
    let tmp = Path::new("/etc/sudoers.d/.migrun-test.tmp");
    std::fs::write(tmp, &rule).unwrap();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o440)).unwrap();
    let ok = Command::new("visudo")
        .args(["-cf"])
        .arg(tmp)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "visudo refuses {rule}");
    std::fs::rename(tmp, "/etc/sudoers.d/migrun-test").unwrap();
    uid_of(USER).unwrap()
}

/// `sudo -n [VAR=value...] migrun ARGS` as the test user, from a directory they can enter.
fn sudo(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Output {
    let mut c = Command::new("runuser");
    c.args(["-u", USER, "--", "sudo", "-n"]);
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.arg(BIN).args(args).current_dir("/");
    c.env_clear().env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        let _ = i.write_all(stdin);
    }
    child.wait_with_output().unwrap()
}

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{needle}: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(err.contains("is not open to a user through sudo"), "{err}");
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A directory of the user's, holding a program that leaves a mark when root runs it.
struct Trap {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    mark: PathBuf,
}

fn trap(uid: u32) -> Trap {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let mark = dir.join("ran-as-root");
    for name in ["evil.sh", "docker"] {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
    }
    std::fs::write(
        dir.join("c.toml"),
        format!("docker = \"{}/evil.sh\"\n", dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
    Trap { _dir: d, dir, mark }
}

#[test]
fn a_sudo_user_cannot_point_root_at_their_own_files() {
    let uid = setup();
    let t = trap(uid);
    let evil = t.dir.join("evil.sh");
    let evil = evil.to_str().unwrap();
    let run = ["--inject", "env", "--profile", "19", "busybox", "true"];
    let with = |pre: &[&str]| {
        let mut v = vec!["--simulate", SPEC];
        v.extend_from_slice(pre);
        v.extend_from_slice(&run);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };

    let a = with(&["--docker", evil]);
    refused(&sudo(&[], &as_strs(&a), b""), "--docker");
    refused(
        &sudo(&[("MIGRUN_DOCKER", evil)], &as_strs(&with(&[])), b""),
        "--docker",
    );
    let cfg = t.dir.join("c.toml");
    let c = vec!["--config".to_string(), cfg.display().to_string()];
    let mut a = c.clone();
    a.extend(with(&[]));
    refused(&sudo(&[], &as_strs(&a), b""), "--config");
    // The docker CLI found on a PATH the user chose is not run either.
    let path = format!("{}:/usr/bin:/bin", t.dir.display());
    refused(
        &sudo(&[("PATH", &path)], &as_strs(&with(&[])), b""),
        "the docker CLI",
    );
    refused(
        &sudo(
            &[(
                "MIGRUN_NVML_LIB",
                &format!("{}/libnvidia-ml.so.1", t.dir.display()),
            )],
            &["status"],
            b"",
        ),
        "MIGRUN_NVML_LIB",
    );
    assert!(!t.mark.exists(), "root ran the user's program");

    // The shim's log and a crafted poststop: refused before any file is opened or lease touched.
    let root_dir = tempfile::tempdir().unwrap();
    let log = root_dir.path().join("x");
    let o = sudo(
        &[],
        &[
            "runtime",
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "text",
            "create",
            "--bundle",
            t.dir.to_str().unwrap(),
            "id",
        ],
        b"",
    );
    refused(&o, "migrun runtime");
    assert!(!log.exists(), "root created the file the user named");
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"victim","status":"stopped","bundle":"{}"}}"#,
        t.dir.display()
    );
    refused(
        &sudo(&[], &["hook", "poststop"], state.as_bytes()),
        "migrun hook",
    );
    refused(&sudo(&[], &["teardown", "--all"], b""), "migrun teardown");
    refused(&sudo(&[], &["mig", "disable", "--all"], b""), "migrun mig");
    refused(
        &sudo(
            &[],
            &["--state-dir", t.dir.to_str().unwrap(), "status"],
            b"",
        ),
        "--state-dir",
    );
}

#[test]
fn a_sudo_user_allocates_and_releases_as_themselves() {
    let uid = setup();
    let dir = migrun::commands::default_sim_dir(&SPEC.parse().unwrap(), 0).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let o = sudo(
        &[],
        &["--simulate", SPEC, "alloc", "--profile", "19", "--json"],
        b"",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lease: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(lease["uid"], uid, "charged to the user, not to root");
    let id = lease["lease"].to_string();
    let o = sudo(&[], &["--simulate", SPEC, "release", &id], b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
