//! The Debian package for real: `cargo deb` (cargo-deb, pinned in scripts/setup-test-host.sh) builds it, apt
//! installs it **on this host** (not in a debootstrap root: the hooks.d files name `/usr/bin/migrun` and
//! daemon.json names `/usr/bin/migrun-runtime`, which the host's podman and dockerd execute, so a chroot would
//! need its own engines), and the engine tests run against the installed files:
//! - podman finding the hooks.d files where the package put them (its default hooks dir, no `--hooks-dir`): a
//!   container without the annotation is left alone, one with it runs the installed `migrun hook precreate`
//!   (which, with no GPU here, refuses the start); the same files, with only the simulator's env added (podman
//!   gives hooks no other env), give a slice and take it back;
//! - a private dockerd whose daemon.json is the packaged one, naming `/usr/bin/migrun-runtime`;
//! - `migrun gc` as the installed unit's `ExecStart` says, and `systemd-analyze verify` on the units;
//! - removal: refused while a lease is held (the prerm; the lease state is never touched), then with
//!   `MIGRUN_REMOVE_WITH_LEASES=1` it leaves the lease alone, and no hook, link, binary or unit stays; purge takes the
//!   conffile and the unit's mask link too. `/run/migrun` and `/var/lib/migrun` are private tmpfs mounts for
//!   that step, so the host's real state is never seen or changed.
//!
//! The package carries the dev-profile binary the suite already built (`--profile dev --no-build`): a release build
//! with fat LTO would cost minutes of the suite's 30; the files, scripts and units are the release package's.
//! Needs root, apt, cargo-deb, podman, dockerd, systemd-analyze; fails when one is missing.

mod common;
mod hooks_common;

use common::engines::{require, require_root, run_ok, run_output, Podman, PrivateDockerd};
use hooks_common::Sim;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_DEB_VERSION: &str = "3.8.0";
const HOOKS_D: &str = "/usr/share/containers/oci/hooks.d";
const UNITS: &str = "/usr/lib/systemd/system";

/// Every path the package installs that must be gone after removal (the conffile goes with purge).
const INSTALLED: &[&str] = &[
    "/usr/bin/migrun",
    "/usr/bin/migrun-runtime",
    "/usr/share/containers/oci/hooks.d/00-migrun-precreate.json",
    "/usr/share/containers/oci/hooks.d/00-migrun-prestart.json",
    "/usr/share/containers/oci/hooks.d/00-migrun-poststop.json",
    "/usr/lib/tmpfiles.d/migrun.conf",
    "/usr/lib/systemd/system/migrun-gc.service",
    "/usr/lib/systemd/system/migrun-gc.timer",
    "/usr/share/migrun/docker/daemon.json",
    "/usr/share/doc/migrun/README.md",
];

fn sh(script: &str) -> std::process::Output {
    run_output(Command::new("bash").args(["-c", script]))
}

fn apt(args: &[&str]) -> std::process::Output {
    run_output(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed() -> bool {
    let out = sh("dpkg-query -W -f='${Status}' migrun 2>/dev/null");
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Build the .deb into `out` and return its path.
fn build_deb(out: &Path) -> PathBuf {
    let v = run_ok(Command::new("cargo").args(["deb", "--version"]));
    assert!(
        v.contains(CARGO_DEB_VERSION),
        "cargo-deb {CARGO_DEB_VERSION} is needed (scripts/setup-test-host.sh installs it), found {v:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("cargo");
    c.current_dir(root)
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(out);
    // Not the test's own cargo context: cargo-deb reads the manifest itself.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            c.env_remove(k);
        }
    }
    run_ok(&mut c);
    let name = format!("migrun_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let deb = out.join(&name);
    assert!(deb.is_file(), "{name}: the version comes from Cargo.toml");
    deb
}

/// The packaged hooks.d files, copied with only the simulator's env added: podman runs a hook with the
/// hooks.d file's env and nothing else, and the installed files carry none.
fn hooks_with_env(sim: &Sim) -> PathBuf {
    let dir = sim.tmp.path().join("hooks.d");
    fs::create_dir_all(&dir).unwrap();
    for stage in ["precreate", "prestart", "poststop"] {
        let name = format!("00-migrun-{stage}.json");
        let mut v: Value =
            serde_json::from_slice(&fs::read(Path::new(HOOKS_D).join(&name)).unwrap()).unwrap();
        assert_eq!(v["hook"]["path"], "/usr/bin/migrun", "{name}");
        v["hook"]["env"] = serde_json::json!(sim.env_strings());
        fs::write(dir.join(&name), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    dir
}

fn podman_checks(podman_plain: &Podman, sim: &Sim) {
    let image = podman_plain.busybox_image();
    // The installed hooks.d, as is, found by podman itself: a plain container never runs migrun.
    let out = run_ok(podman_plain.run_cmd().arg(&image).args(["echo", "plain"]));
    assert_eq!(out.trim(), "plain");
    // An annotated one reaches the installed migrun, which has no GPU (no NVML) here and refuses the start (podman
    // keeps the hook's own message to itself; migrun's log has it).
    let log_before = fs::read_to_string("/run/migrun/migrun.log")
        .unwrap_or_default()
        .len();
    let refused = run_output(
        podman_plain
            .run_cmd()
            .args(["--annotation", "migrun.profile=1g.10gb"])
            .arg(&image)
            .arg("true"),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("[migrun hook precreate]: exit status 1"),
        "an annotated container must be stopped by migrun's hook: {err}"
    );
    let log = fs::read_to_string("/run/migrun/migrun.log").unwrap_or_default();
    let log = log.get(log_before..).unwrap_or_default();
    assert!(
        log.contains("cannot allocate 1g.10gb (annotation migrun.profile)"),
        "the installed hook's own message, in its log: {log}"
    );

    // The same files with the simulator's env: a slice in, and back out after exit.
    let podman = Podman::new().hooks_dir(hooks_with_env(sim));
    let image = podman.busybox_image();
    let out = run_ok(
        podman
            .run_cmd()
            .args(["--annotation", "migrun.profile=1g.10gb"])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(out.trim().starts_with("MIG-"), "{out:?}\n{}", sim.log());
    wait_until("podman's slice released", || {
        sim.settled_leases().is_empty()
    });
    assert!(sim.instances().is_empty());
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed().as_secs() < 30, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn docker_checks(sim: &Sim) {
    // The packaged daemon.json, as installed: its runtime path is the package's link.
    let v: Value =
        serde_json::from_slice(&fs::read("/usr/share/migrun/docker/daemon.json").unwrap()).unwrap();
    assert_eq!(v["runtimes"]["migrun"]["path"], "/usr/bin/migrun-runtime");
    // dockerd passes its environment down to containerd, its shims and the runtime they run; the
    // simulator's env reaches the installed shim that way.
    for (k, val) in sim.env() {
        std::env::set_var(k, val);
    }
    let docker = PrivateDockerd::start_with_config(v);
    for (k, _) in sim.env() {
        std::env::remove_var(k);
    }
    let image = common::engines::busybox_image(&docker);
    let out = run_ok(
        docker
            .run_cmd()
            .args(["--runtime", "migrun", "-e", "MIGRUN_PROFILE=1g.10gb"])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(out.trim().starts_with("MIG-"), "{out:?}\n{}", sim.log());
    wait_until("docker's slice released", || {
        sim.settled_leases().is_empty()
    });
    assert!(sim.instances().is_empty());
}

/// `migrun gc` exactly as the installed unit's ExecStart says, on a lease whose holder was killed.
fn gc_from_unit(sim: &Sim) {
    let unit = fs::read_to_string(Path::new(UNITS).join("migrun-gc.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in migrun-gc.service");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/migrun");
    let mut holder = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = holder.id().to_string();
    run_ok(Command::new("/usr/bin/migrun").envs(sim.env()).args([
        "alloc",
        "--profile",
        "1g.10gb",
        "--holder-pid",
        &pid,
    ]));
    assert_eq!(sim.leases().len(), 1);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = run_ok(Command::new(argv[0]).args(&argv[1..]).envs(sim.env()));
    assert!(
        out.contains("released") || out.contains("destroyed"),
        "{out}"
    );
    assert!(sim.settled_leases().is_empty() && sim.instances().is_empty());
    let verify = run_output(
        Command::new(require("systemd-analyze"))
            .arg("verify")
            .arg(Path::new(UNITS).join("migrun-gc.service"))
            .arg(Path::new(UNITS).join("migrun-gc.timer")),
    );
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Removal, in a private mount namespace where `/run/migrun` and `/var/lib/migrun` are fresh tmpfs: a held
/// lease refuses `remove`; forced, the lease stays as it was and the package's files go.
fn removal() {
    for d in ["/run/migrun", "/var/lib/migrun"] {
        assert!(
            Path::new(d).is_dir(),
            "{d}: the package's tmpfiles entry creates it"
        );
    }
    let script = r#"
set -u
mount -t tmpfs -o mode=0700 migrun-test /run/migrun && mount -t tmpfs -o mode=0700 migrun-test /var/lib/migrun || exit 90
export DEBIAN_FRONTEND=noninteractive
MIGRUN_SIMULATE=h100-80gb:1 /usr/bin/migrun --state-dir /run/migrun alloc --profile 1g.10gb >/dev/null || exit 91
before=$(cat /run/migrun/leases/1.json) || exit 92
if apt-get remove -y migrun >/tmp/migrun-prerm.$$ 2>&1; then cat /tmp/migrun-prerm.$$; exit 93; fi
grep -q "lease(s) are held" /tmp/migrun-prerm.$$ || { cat /tmp/migrun-prerm.$$; exit 94; }
rm -f /tmp/migrun-prerm.$$
dpkg-query -W -f='${Status}' migrun | grep -q "install ok installed" || exit 95
MIGRUN_REMOVE_WITH_LEASES=1 apt-get remove -y migrun >/dev/null 2>&1 || exit 96
[ "$(cat /run/migrun/leases/1.json)" = "$before" ] || exit 97
exit 0
"#;
    let out = run_output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", script])
            .env_remove("MIGRUN_SIMULATE"),
    );
    assert!(
        out.status.success(),
        "removal step failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!installed());
    for p in INSTALLED {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "{p} is left after removing the package"
        );
    }
    // No enablement link, no mask link (packaging/debian/postrm).
    for p in [
        "/etc/systemd/system/timers.target.wants/migrun-gc.timer",
        "/etc/systemd/system/migrun-gc.timer",
    ] {
        assert!(fs::symlink_metadata(p).is_err(), "{p} is left after remove");
    }
    // The config is a conffile: kept by remove, taken by purge.
    assert!(Path::new("/etc/migrun/config.toml").exists());
    let out = apt(&["purge", "-y", "migrun"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new("/etc/migrun/config.toml").exists(),
        "the conffile is left after purge"
    );
}

#[test]
fn the_deb_installs_serves_the_engines_from_its_files_and_removes_cleanly() {
    require_root();
    for bin in ["apt-get", "dpkg-query", "unshare", "podman", "dockerd"] {
        require(bin);
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());
    if installed() {
        // A run that died half-way left it installed: start clean.
        let out = sh(
            "MIGRUN_REMOVE_WITH_LEASES=1 DEBIAN_FRONTEND=noninteractive apt-get purge -y migrun",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The state dirs the package creates: removed again at the end if this test's install made them, so the host
    // is left as it was.
    let had: Vec<(&str, bool)> = ["/run/migrun", "/var/lib/migrun"]
        .iter()
        .map(|d| (*d, Path::new(d).exists()))
        .collect();
    let out = apt(&[
        "install",
        "-y",
        "--no-install-recommends",
        &deb.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "apt-get install {deb:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(installed());
    // What the package put where packaging/README.md says.
    for p in INSTALLED.iter().chain(&["/etc/migrun/config.toml"]) {
        assert!(fs::symlink_metadata(p).is_ok(), "{p} is not installed");
    }
    // The timer is enabled by the package (started too where systemd runs).
    assert!(
        fs::symlink_metadata("/etc/systemd/system/timers.target.wants/migrun-gc.timer").is_ok(),
        "migrun-gc.timer is not enabled"
    );
    assert_eq!(
        fs::read_link("/usr/bin/migrun-runtime").unwrap(),
        PathBuf::from("migrun")
    );
    let v = run_ok(Command::new("/usr/bin/migrun").arg("--version"));
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    // The installed default config is the built-in defaults (every key commented out), and valid.
    run_ok(Command::new("/usr/bin/migrun").args(["--simulate", "h100-80gb", "profiles"]));

    let sim = Sim::new("h100-80gb:1");
    gc_from_unit(&sim);
    // No --hooks-dir: podman finds the package's files in its own default hooks dir.
    podman_checks(&Podman::new(), &sim);
    docker_checks(&sim);
    removal();
    // What this test's install created (the installed hook above logged into the new /run/migrun) goes again.
    for (d, existed) in had {
        if !existed {
            let _ = fs::remove_dir_all(d);
        }
    }
}
