//! Who may change GPUs: a non-root caller (uid 65534 via setpriv) against the fake NVML is told exactly what needs
//! privilege and the two supported ways (sudoers rule, runtime shim), exit 4; NVML's NO_PERMISSION says the same.
//! It must not need a real GPU; it needs root to switch to uid 65534 (tests run as root).

mod common;

use common::fake_nvml::FakeNvml;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_migrun");

fn setpriv() -> &'static str {
    let p = "/usr/bin/setpriv";
    assert!(
        std::path::Path::new(p).exists(),
        "setpriv (util-linux) is needed to run migrun as uid 65534; run scripts/setup-test-host.sh"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests switch to uid 65534 and must run as root"
    );
    p
}

/// `migrun args` as uid/gid 65534 with no supplementary groups, against `fake`.
fn as_nobody(fake: &FakeNvml, args: &[&str]) -> Output {
    // The fake machine's temp dir is root's 0700; open it so the unprivileged process gets as far as migrun's own check.
    std::fs::set_permissions(fake.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = fake.dir().join("config.toml");
    std::fs::write(&config, "").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Command::new(setpriv());
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(fake.env())
        .env("MIGRUN_CONFIG", &config)
        .env("MIGRUN_STATE_DIR", fake.dir().join("nobody-state"));
    c.output().unwrap()
}

fn names_both_ways(o: &Output, what: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{what}: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{what}: one line: {e:?}");
    for needle in [
        "needs root",
        "sudoers",
        "runtime shim",
        "docs/security.md",
        "uid 65534",
    ] {
        assert!(e.contains(needle), "{what}: {e:?} lacks {needle:?}");
    }
}

#[test]
fn a_non_root_caller_is_told_what_needs_privilege_and_the_two_ways() {
    let fake = FakeNvml::new("h100-80gb:1");
    for args in [
        &["alloc", "--profile", "1g.10gb"][..],
        &["release", "1"],
        &["gc"],
        &["mig", "enable", "--gpu", "0"],
        &[
            "--profile",
            "1g.10gb",
            "--inject",
            "env",
            "--docker",
            "/bin/true",
            "img",
        ],
    ] {
        let o = as_nobody(&fake, args);
        names_both_ways(&o, &format!("{args:?}"));
    }
    // Nothing was created on the device, and no state dir was made for the refused caller.
    assert!(fake.machine().gpus[0].instances.is_empty());
    assert!(!fake.dir().join("nobody-state").exists());
}

#[test]
fn nvml_no_permission_gives_the_same_guidance() {
    // Root by uid, but the driver says NO_PERMISSION (e.g. a container without CAP_SYS_ADMIN).
    let fake = FakeNvml::new("h100-80gb:1").nonroot();
    let o = fake
        .command()
        .args(["alloc", "--profile", "1g.10gb"])
        .env("MIGRUN_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{e}");
    for needle in ["NO_PERMISSION", "sudoers", "runtime shim"] {
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }
    assert!(fake.machine().gpus[0].instances.is_empty());
    let leases = std::fs::read_dir(fake.state_dir().join("leases"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leases, 0, "no lease left behind");
}

#[test]
fn sudo_uid_from_a_non_root_caller_is_ignored() {
    // An unprivileged process cannot pose as someone else through SUDO_UID: it is still refused as itself.
    let fake = FakeNvml::new("h100-80gb:1");
    std::fs::set_permissions(fake.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(setpriv())
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["alloc", "--profile", "1g.10gb"])
        .env("SUDO_UID", "0")
        .env("MIGRUN_CONFIG", "/dev/null")
        .envs(fake.env())
        .env("MIGRUN_STATE_DIR", fake.dir().join("nobody-state"))
        .output()
        .unwrap();
    names_both_ways(&o, "SUDO_UID=0 as uid 65534");
}
