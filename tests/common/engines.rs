//! Real container engines for integration tests: private `dockerd`, `containerd`, `podman`
//! and `runc` instances that live under temporary directories and never touch the host's own
//! engines, plus a busybox image/bundle built locally from `/bin/busybox` (busybox-static).
//!
//! Rules this module follows:
//! - A missing component makes the test **fail** (panic) with a hint to run
//!   `scripts/setup-test-host.sh` as root. Nothing is ever skipped.
//! - Nothing is pulled: every image is built locally and every `run` uses `--pull never`.
//! - Every daemon/state dir gets a cleanup *watchdog*: a small `sh` process holding the read end of a
//!   pipe whose write end only this test process holds. When the test process ends in any way
//!   (normal exit, panic, SIGKILL), the pipe closes and the watchdog stops the daemon, kills stray
//!   containers, unmounts leftovers, removes the private bridge and deletes the directory.
//!   `Drop` and an `atexit` handler (for the `shared_*` statics) trigger the same cleanup and wait
//!   for it, so nothing is left running when `cargo test` returns.
//!   (`PR_SET_PDEATHSIG` is not used on purpose: it fires when the *thread* that spawned the
//!   child exits, and libtest runs every test on its own thread, which would kill a shared daemon
//!   as soon as the first test using it finished.)
//!
//! Host facts this relies on (Debian 12 VM, checked): private dockerd needs no iptables at all:
//! it runs with `--iptables=false --ip-masq=false` on a bridge created here (`mrt<pid>-<n>`,
//! a free 10.213.x.0/24), and `-p 127.0.0.1:PORT:80` works through docker-proxy.
//! dockerd is left with its default `--ip-forward=true` (it sets net.ipv4.ip_forward=1, which a
//! system dockerd does too); otherwise every `docker run` prints
//! "WARNING: IPv4 forwarding is disabled" on stderr.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

// A child of this module (not of `common`), so the benchmarks that include this file by path get it too.
#[path = "engine_set.rs"]
pub mod engine_set;
pub use engine_set::EngineSet;

/// Image name of the busybox image inside a [`PrivateDockerd`].
pub const DOCKER_BUSYBOX_IMAGE: &str = "migrun-test/busybox:latest";
/// Image name of the busybox image inside a [`Podman`] store.
pub const PODMAN_BUSYBOX_IMAGE: &str = "localhost/migrun-test/busybox:latest";
/// Image name of the busybox image inside a [`PrivateContainerd`].
pub const CONTAINERD_BUSYBOX_IMAGE: &str = "docker.io/migrun-test/busybox:latest";
/// Body of `/www/index.html` in every busybox rootfs made here.
pub const BUSYBOX_INDEX_HTML: &str = "migrun busybox test page\n";
/// `--ulimit` flags podman needs in this VM (its defaults exceed the VM's hard rlimits).
pub const PODMAN_ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

const SETUP_HINT: &str = "run scripts/setup-test-host.sh as root";
const EXTRA_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
static COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Finds `bin` on `PATH` (then `/usr/local/sbin`, `/usr/sbin`, `/sbin`, ...). Panics when missing:
/// tests must fail, not skip, when a component is not installed.
pub fn require(bin: &str) -> PathBuf {
    find_bin(bin).unwrap_or_else(|| panic!("{bin} not found: {SETUP_HINT}"))
}

fn find_bin(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics unless running as root (every engine here needs root).
pub fn require_root() {
    let euid = nix::unistd::geteuid().as_raw();
    assert!(
        euid == 0,
        "container engine tests must run as root (euid is {euid}): run `bash scripts/test.sh` as root, or `sudo bash scripts/test.sh`"
    );
}

/// The docker CLI to use: the Debian `docker.io` one (`/usr/bin/docker`, same version as dockerd)
/// if present, since a newer CLI may shadow it on `PATH` (e.g. `/usr/local/bin/docker`);
/// otherwise whatever `docker` is on `PATH`.
pub fn docker_cli() -> PathBuf {
    let debian = Path::new("/usr/bin/docker");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        require("docker")
    }
}

/// A name unique within this host for this process: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Runs `cmd`, returns its output; panics only if it cannot be started.
pub fn run_output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and returns its stdout; panics with full diagnostics unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One plain `HTTP/1.0 GET path` to 127.0.0.1:port; returns the whole response (status line,
/// headers, body).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// [`try_http_get`] retried until it returns a `200` response or `timeout` passes (then panics).
/// Returns the body.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let last = match try_http_get(port, path) {
            Ok(resp) if resp.starts_with("HTTP/1.") && resp.contains(" 200 ") => {
                return resp
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default();
            }
            Ok(resp) => format!("response: {resp:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            start.elapsed() < timeout,
            "GET http://127.0.0.1:{port}{path} did not answer 200 within {timeout:?}; last {last}"
        );
        sleep(Duration::from_millis(100));
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh directory `<tmp>/migrun-<kind>-<pid>-<n>` that outlives any `TempDir` (the cleanup
/// watchdog removes it). Kept short: unix socket paths must stay under 108 bytes.
fn private_dir(kind: &str) -> PathBuf {
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() > 40 {
        base = PathBuf::from("/tmp");
    }
    loop {
        let dir = base.join(unique_name(&format!("migrun-{kind}")));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {dir:?}: {e}"),
        }
    }
}

fn sbin_path() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    let mut p = if cur.is_empty() {
        String::new()
    } else {
        format!("{cur}:")
    };
    p.push_str(&EXTRA_DIRS.join(":"));
    p
}

fn sh_quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

fn sh_join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    words
        .into_iter()
        .map(|w| sh_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Cleanup watchdog
// ---------------------------------------------------------------------------------------------

/// Run by `sh` with its stdin on a pipe; waits for EOF (WD_WAIT=1), then cleans up everything that
/// belongs to `$WD_DIR`. Idempotent. Environment:
/// WD_DIR (required), WD_PID or WD_PIDFILE (main daemon pid), WD_GRACE (tenths of a second for SIGTERM),
/// WD_PRE (shell command run first), WD_RUNC + WD_RUNC_ROOTS (runc roots, globs allowed, whose
/// containers get `runc delete -f`), WD_BRIDGE (link to delete), WD_RM (extra paths to remove).
const CLEANUP_SH: &str = r#"
trap '' INT TERM HUP PIPE
[ "${WD_WAIT:-0}" = 1 ] && { read -r _ || :; }
dir=$WD_DIR
[ -n "$dir" ] && [ "$dir" != / ] || exit 1
ours() {
  [ "$1" = "$$" ] && return 1
  c=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$c" in *"$dir/"*) return 0 ;; esac
  return 1
}
alive() {
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  [ -n "$s" ] && [ "$s" != Z ]
}
stop() {
  p=$1; [ -n "$p" ] || return 0
  alive "$p" && ours "$p" || return 0
  kill -TERM "$p" 2>/dev/null; i=0
  while alive "$p" && [ $i -lt "${WD_GRACE:-100}" ]; do sleep 0.1; i=$((i+1)); done
  alive "$p" && kill -KILL "$p" 2>/dev/null; i=0
  while alive "$p" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}
[ -n "$WD_PRE" ] && { eval "$WD_PRE" >/dev/null 2>&1 || :; }
[ -z "$WD_PID" ] && [ -n "$WD_PIDFILE" ] && WD_PID=$(cat "$WD_PIDFILE" 2>/dev/null)
stop "$WD_PID"
if [ -n "$WD_RUNC" ]; then
  for r in $WD_RUNC_ROOTS; do
    [ -d "$r" ] || continue
    for id in $("$WD_RUNC" --root "$r" list -q 2>/dev/null); do
      "$WD_RUNC" --root "$r" delete -f "$id" >/dev/null 2>&1
    done
  done
fi
for p in $(ls /proc); do
  case "$p" in *[!0-9]*) continue ;; esac
  ours "$p" && kill -KILL "$p" 2>/dev/null
done
sleep 0.2
awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
  while read -r m; do umount -l "$m" 2>/dev/null; done
[ -n "$WD_BRIDGE" ] && ip link del "$WD_BRIDGE" 2>/dev/null
for x in $WD_RM; do rm -rf "$x"; done
rm -rf "$dir"
exit 0
"#;

/// Owns a watchdog process; `finish` (or process exit) triggers the cleanup.
struct Guard {
    child: Mutex<Option<Child>>,
    stdin: Mutex<Option<ChildStdin>>,
    /// The process that made it: a `fork()`ed child (which inherits the statics and runs atexit
    /// handlers) must not stop its parent's daemons.
    owner: u32,
}

impl Guard {
    fn spawn(env: &[(&str, String)]) -> Guard {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(CLEANUP_SH)
            .env("PATH", sbin_path())
            .env("WD_WAIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // own process group: a Ctrl-C on the terminal must not kill the cleanup
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn cleanup watchdog /bin/sh: {e}"));
        let stdin = child.stdin.take();
        Guard {
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            owner: std::process::id(),
        }
    }

    /// Runs the cleanup now and waits (at most 2 minutes) for it. Never panics (used in atexit).
    fn finish(&self) {
        if self.owner != std::process::id() {
            return;
        }
        if let Ok(mut s) = self.stdin.try_lock() {
            s.take();
        }
        let Ok(mut c) = self.child.try_lock() else {
            return;
        };
        if let Some(mut child) = c.take() {
            let done = wait_until(Duration::from_secs(120), || {
                matches!(child.try_wait(), Ok(Some(_)) | Err(_))
            });
            if !done {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs the cleanup script synchronously (no watchdog), e.g. before reusing a name.
fn cleanup_now(env: &[(&str, String)]) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(CLEANUP_SH).env("PATH", sbin_path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let _ = cmd.stdin(Stdio::null()).output();
}

fn reap(child: &Mutex<Option<Child>>) {
    if let Ok(mut c) = child.try_lock() {
        if let Some(mut ch) = c.take() {
            if !matches!(ch.try_wait(), Ok(Some(_))) {
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
    }
}

/// Spawns a daemon in its own process group with stdout+stderr to `log`, and writes its pid to
/// `pidfile` (read by the watchdog).
fn spawn_daemon(mut cmd: Command, log: &Path, pidfile: &Path) -> Child {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {log:?}: {e}"));
    let err = out.try_clone().expect("clone log fd");
    cmd.env("PATH", sbin_path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    fs::write(pidfile, child.id().to_string()).expect("write daemon pid file");
    child
}

extern "C" fn stop_shared_engines() {
    for cell in [&SHARED_DOCKERD, &SHARED_DOCKERD_TRIXIE] {
        if let Some(Ok(d)) = cell.get() {
            d.stop();
        }
    }
    for cell in [&SHARED_CONTAINERD, &SHARED_CONTAINERD_TRIXIE] {
        if let Some(Ok(c)) = cell.get() {
            c.stop();
        }
    }
}

// The test harness's one unsafe call (the product keeps all of its own in src/gpu/nvml/ffi.rs).
#[allow(unsafe_code)]
fn register_atexit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(stop_shared_engines);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// busybox rootfs, image tarballs, OCI bundle
// ---------------------------------------------------------------------------------------------

const PRINTENV_SH: &str = r#"#!/bin/sh
# printenv [NAME...]: busybox-static on Debian 12 lacks the applet.
[ $# -eq 0 ] && exec env
rc=0
for n in "$@"; do
  case "$n" in ''|[0-9]*|*[!A-Za-z0-9_]*) rc=1; continue ;; esac
  eval "set_=\${$n+x}"
  if [ -n "$set_" ]; then eval "printf '%s\n' \"\$$n\""; else rc=1; fi
done
exit $rc
"#;

/// Path of a statically linked busybox (`/bin/busybox` from busybox-static). Panics otherwise.
pub fn busybox_static() -> PathBuf {
    let bb = find_bin("busybox")
        .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("busybox not found: {SETUP_HINT} (package busybox-static)"));
    let elf = fs::read(&bb).unwrap_or_else(|e| panic!("cannot read {bb:?}: {e}"));
    assert!(
        !elf_has_interp(&elf),
        "{bb:?} is dynamically linked; containers need busybox-static: {SETUP_HINT}"
    );
    bb
}

fn elf_has_interp(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false; // not ELF64: let it fail later, loudly
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= elf.len() && u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// Builds a busybox root filesystem at `rootfs` (created if missing): `/bin/busybox` plus one
/// relative symlink per applet (`sh`, `echo`, `env`, `printenv`, `sleep`, `cat`, `httpd`, `wget`,
/// ...), `/sbin`, `/usr/bin`, `/usr/sbin` linking to `/bin`, `etc/passwd`, `etc/group`, `/tmp`
/// (1777) and `/www/index.html` ([`BUSYBOX_INDEX_HTML`]).
pub fn busybox_rootfs(rootfs: &Path) -> PathBuf {
    let bb = busybox_static();
    for d in [
        "bin", "etc", "tmp", "www", "proc", "sys", "dev", "root", "usr", "var",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
    let target = rootfs.join("bin/busybox");
    fs::copy(&bb, &target).unwrap_or_else(|e| panic!("copy {bb:?}: {e}"));
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod busybox");
    let list = run_ok(Command::new(&bb).arg("--list"));
    for applet in list.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = rootfs.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", &link).unwrap_or_else(|e| panic!("symlink {link:?}: {e}"));
        }
    }
    // Debian's busybox-static has no `printenv` applet: add a POSIX sh stand-in.
    let printenv = rootfs.join("bin/printenv");
    if fs::symlink_metadata(&printenv).is_err() {
        fs::write(&printenv, PRINTENV_SH).expect("write bin/printenv");
        fs::set_permissions(&printenv, fs::Permissions::from_mode(0o755)).expect("chmod printenv");
    }
    for (link, to) in [
        ("sbin", "bin"),
        ("usr/bin", "../bin"),
        ("usr/sbin", "../bin"),
    ] {
        let link = rootfs.join(link);
        if fs::symlink_metadata(&link).is_err() {
            symlink(to, &link).unwrap_or_else(|e| panic!("symlink {link:?}: {e}"));
        }
    }
    let files = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "busybox\n"),
        ("www/index.html", BUSYBOX_INDEX_HTML),
    ];
    for (f, body) in files {
        fs::write(rootfs.join(f), body).unwrap_or_else(|e| panic!("write {f}: {e}"));
    }
    rootfs.to_path_buf()
}

/// Writes `<dir>/busybox-rootfs.tar` (a busybox rootfs, see [`busybox_rootfs`]) and returns it.
/// Suitable for `docker import` / `podman import`.
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let rootfs = busybox_rootfs(&dir.join("busybox-rootfs"));
    let tar = dir.join("busybox-rootfs.tar");
    run_ok(
        Command::new(require("tar"))
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    fs::remove_dir_all(&rootfs).expect("remove staging rootfs");
    tar
}

fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new(require("sha256sum")).arg(path));
    let hex = out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex.len(), 64, "bad sha256sum output {out:?}");
    hex
}

/// Writes an OCI image-layout tarball `<dir>/busybox-oci.tar` holding the busybox rootfs as a
/// single uncompressed layer, named [`CONTAINERD_BUSYBOX_IMAGE`] (annotation
/// `io.containerd.image.name`, ref `latest`). `ctr images import` takes it as is; no docker needed.
pub fn busybox_oci_tar(dir: &Path) -> PathBuf {
    busybox_oci_tar_as(dir, CONTAINERD_BUSYBOX_IMAGE, &["sh"])
}

/// [`busybox_oci_tar`] named `name` with `Cmd` `cmd` (e.g. a CRI pod's sandbox image, which must keep
/// running: `["sleep", "3600"]`).
pub fn busybox_oci_tar_as(dir: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let layer = busybox_rootfs_tar(dir);
    let oci = dir.join("busybox-oci");
    let blobs = oci.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir blobs");
    let put = |path: &Path| -> (String, u64) {
        let digest = sha256_file(path);
        let size = fs::metadata(path).expect("stat blob").len();
        fs::rename(path, blobs.join(&digest)).expect("move blob");
        (format!("sha256:{digest}"), size)
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config_file = dir.join("config.json.tmp");
    fs::write(&config_file, serde_json::to_vec(&config).unwrap()).expect("write config");
    let (config_digest, config_size) = put(&config_file);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let manifest_file = dir.join("manifest.json.tmp");
    fs::write(&manifest_file, serde_json::to_vec(&manifest).unwrap()).expect("write manifest");
    let (manifest_digest, manifest_size) = put(&manifest_file);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(oci.join("index.json"), serde_json::to_vec(&index).unwrap()).expect("index.json");
    fs::write(oci.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let tar = dir.join("busybox-oci.tar");
    run_ok(
        Command::new(require("tar"))
            .arg("-C")
            .arg(&oci)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    fs::remove_dir_all(&oci).expect("remove oci staging dir");
    tar
}

/// Makes `dir` (created if missing) an OCI bundle for runc: `dir/rootfs` (busybox) and
/// `dir/config.json` from `runc spec` (root, not rootless), patched with `serde_json`:
/// `process.args = args`, `process.terminal = false`, `root.path = "rootfs"`,
/// `root.readonly = false`. Returns the bundle path (`dir`). Patch `config.json` further as
/// needed (e.g. hooks), with [`patch_bundle_config`].
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    busybox_rootfs(&dir.join("rootfs"));
    let config = dir.join("config.json");
    let _ = fs::remove_file(&config);
    run_ok(
        Command::new(require("runc"))
            .arg("spec")
            .arg("--bundle")
            .arg(dir),
    );
    patch_bundle_config(dir, |spec| {
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"]["path"] = serde_json::json!("rootfs");
        spec["root"]["readonly"] = serde_json::json!(false);
    });
    dir.to_path_buf()
}

/// Reads `<bundle>/config.json` as a `serde_json::Value`, lets `f` change it, writes it back.
pub fn patch_bundle_config(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = bundle.join("config.json");
    let text = fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    let mut spec: serde_json::Value = serde_json::from_slice(&text).expect("config.json is JSON");
    f(&mut spec);
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap())
        .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// runc
// ---------------------------------------------------------------------------------------------

/// runc with a private `--root` (state dir) so container ids never clash with the host's.
/// Leftover containers are `runc delete -f`ed on drop / process exit.
///
/// Note: the container process inherits runc's stdio. `runc run` in the foreground with
/// `run_ok`/`output()` is fine, but for `runc create` (or `run -d`) give it `Stdio::null()` or
/// files, otherwise reading its output waits for the container to exit.
pub struct Runc {
    bin: PathBuf,
    dir: PathBuf,
    guard: Guard,
}

impl Runc {
    pub fn new() -> Self {
        require_root();
        let bin = require("runc");
        let dir = private_dir("runc");
        let guard = Guard::spawn(&[
            ("WD_DIR", dir.display().to_string()),
            ("WD_RUNC", bin.display().to_string()),
            ("WD_RUNC_ROOTS", dir.join("root").display().to_string()),
        ]);
        Runc { bin, dir, guard }
    }

    /// The state dir passed as `runc --root`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `runc --root <private>`; append the subcommand.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root());
        c
    }

    /// `runc --root <private> run --bundle <bundle> <id>` (foreground, stdio captured by caller).
    pub fn run_cmd(&self, bundle: &Path, id: &str) -> Command {
        let mut c = self.cmd();
        c.arg("run").arg("--bundle").arg(bundle).arg(id);
        c
    }
}

impl Default for Runc {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        self.guard.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------------------------

/// A private dockerd (and the containerd it starts itself) under `/tmp/migrun-dockerd-*`:
/// own `--data-root`, `--exec-root`, `--pidfile`, `-H unix://<dir>/docker.sock`, own
/// `--config-file` (so `/etc/docker/daemon.json` is never read), own bridge `mrt<pid>-<n>` on a
/// free 10.213.x.0/24, `--iptables=false --ip-masq=false`, `--shutdown-timeout 2`.
pub struct PrivateDockerd {
    dir: PathBuf,
    host: String,
    cli: PathBuf,
    bridge: String,
    child: Mutex<Option<Child>>,
    guard: Guard,
    image: OnceLock<String>,
}

static SHARED_DOCKERD: OnceLock<Result<PrivateDockerd, String>> = OnceLock::new();
static SHARED_DOCKERD_TRIXIE: OnceLock<Result<PrivateDockerd, String>> = OnceLock::new();

/// [`shared_dockerd`] of engine set `set` (one per set and test binary).
pub fn shared_dockerd_in(set: EngineSet) -> &'static PrivateDockerd {
    let cell = match set {
        EngineSet::Bookworm => &SHARED_DOCKERD,
        EngineSet::Trixie => &SHARED_DOCKERD_TRIXIE,
    };
    let r = cell.get_or_init(|| {
        register_atexit();
        PrivateDockerd::try_start_in(set, serde_json::json!({}))
    });
    match r {
        Ok(d) => d,
        Err(e) => panic!("shared dockerd of {} failed to start: {e}", set.name()),
    }
}

/// One dockerd shared by all tests of this test binary (started on first use). It is stopped and
/// cleaned up when the test process exits (atexit handler + watchdog).
pub fn shared_dockerd() -> &'static PrivateDockerd {
    let r = SHARED_DOCKERD.get_or_init(|| {
        register_atexit();
        PrivateDockerd::try_start_with_config(serde_json::json!({}))
    });
    match r {
        Ok(d) => d,
        Err(e) => panic!("shared dockerd failed to start: {e}"),
    }
}

impl PrivateDockerd {
    /// Starts a private dockerd; panics (with the daemon log) if it does not answer in 60 s.
    pub fn start() -> Self {
        Self::start_with_config(serde_json::json!({}))
    }

    /// Like [`start`](Self::start), with extra OCI runtimes in daemon.json:
    /// `"runtimes": {name: {"path": path}}` (use with `docker run --runtime name`).
    pub fn start_with_runtimes(runtimes: &[(&str, &Path)]) -> Self {
        let mut rt = serde_json::Map::new();
        for (name, path) in runtimes {
            rt.insert(
                name.to_string(),
                serde_json::json!({"path": path.display().to_string()}),
            );
        }
        Self::start_with_config(serde_json::json!({ "runtimes": rt }))
    }

    /// Like [`start`](Self::start), with `extra` (a JSON object) as the daemon.json content.
    /// Don't set keys that are passed as flags (`data-root`, `exec-root`, `pidfile`, `hosts`,
    /// `bridge`, `iptables`, `ip-masq`, `shutdown-timeout`): dockerd refuses duplicates.
    pub fn start_with_config(extra: serde_json::Value) -> Self {
        Self::try_start_with_config(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with_config(extra: serde_json::Value) -> Result<Self, String> {
        Self::try_start_in(EngineSet::Bookworm, extra)
    }

    /// Like [`start_with_config`](Self::start_with_config), with the dockerd and docker CLI of `set`.
    pub fn start_in(set: EngineSet, extra: serde_json::Value) -> Self {
        Self::try_start_in(set, extra).unwrap_or_else(|e| panic!("{}: {e}", set.name()))
    }

    fn try_start_in(set: EngineSet, extra: serde_json::Value) -> Result<Self, String> {
        require_root();
        let dockerd = set.bin("dockerd");
        if set == EngineSet::Bookworm {
            for b in [
                "containerd",
                "containerd-shim-runc-v2",
                "runc",
                "docker-proxy",
                "ip",
            ] {
                require(b);
            }
        }
        let cli = set.bin("docker");
        remove_stale_bridges();
        let dir = private_dir("dockerd");
        let bridge = format!(
            "mrt{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let runc = require("runc");
        // The watchdog exists before anything else, so even a failed start is cleaned up.
        let guard = Guard::spawn(&[
            ("WD_DIR", dir.display().to_string()),
            ("WD_PIDFILE", dir.join("daemon.pid").display().to_string()),
            ("WD_GRACE", "300".to_string()),
            ("WD_BRIDGE", bridge.clone()),
            ("WD_RUNC", runc.display().to_string()),
            (
                "WD_RUNC_ROOTS",
                format!("{}/exec/runtime-*/moby", dir.display()),
            ),
        ]);
        let subnet = create_bridge(&bridge)?;
        let config = dir.join("daemon.json");
        fs::write(&config, serde_json::to_vec_pretty(&extra).unwrap())
            .map_err(|e| format!("write {config:?}: {e}"))?;
        let sock = dir.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let log = dir.join("dockerd.log");
        let mut cmd = Command::new(&dockerd);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(&host)
            .arg("--bridge")
            .arg(&bridge)
            .arg("--iptables=false")
            .arg("--ip-masq=false")
            .arg("--shutdown-timeout")
            .arg("2");
        let child = spawn_daemon(cmd, &log, &dir.join("daemon.pid"));
        let d = PrivateDockerd {
            guard,
            dir,
            host,
            cli,
            bridge,
            child: Mutex::new(Some(child)),
            image: OnceLock::new(),
        };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(60), || {
            if let Ok(Some(st)) = d.child.lock().unwrap().as_mut().unwrap().try_wait() {
                exited = Some(st);
                return true;
            }
            d.docker_cmd()
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if !up || exited.is_some() {
            let why = match exited {
                Some(st) => format!("dockerd exited with {st}"),
                None => "dockerd did not answer `docker info` within 60 s".to_string(),
            };
            let msg = format!(
                "{why} (bridge {} on {subnet})\n--- {} (tail) ---\n{}",
                d.bridge,
                log.display(),
                log_tail(&log, 60)
            );
            drop(d);
            return Err(msg);
        }
        Ok(d)
    }

    /// `unix:///tmp/migrun-dockerd-.../docker.sock`
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The daemon's private directory (data/, exec/, daemon.json, dockerd.log, ...).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon log (stdout + stderr of dockerd).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The bridge the daemon's default network uses.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// `docker -H <host>` with a private `DOCKER_CONFIG` and no `DOCKER_HOST`/`DOCKER_CONTEXT`.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.env("DOCKER_CONFIG", self.dir.join("cli-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .arg("-H")
            .arg(&self.host);
        c
    }

    /// `docker -H <host> run --rm --pull never`; append options, image and command.
    pub fn run_cmd(&self) -> Command {
        let mut c = self.docker_cmd();
        c.args(["run", "--rm", "--pull", "never"]);
        c
    }

    /// Stops the daemon and cleans up (idempotent; also done by `Drop` and at process exit).
    pub fn stop(&self) {
        if self.guard.owner == std::process::id() {
            self.guard.finish();
            reap(&self.child);
        }
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Imports (once per daemon) [`DOCKER_BUSYBOX_IMAGE`] from a busybox rootfs tar with
/// `docker import` (`ENV PATH=...`, `CMD ["sh"]`) and returns its name. Run it with `--pull never`.
pub fn busybox_image(docker: &PrivateDockerd) -> String {
    docker
        .image
        .get_or_init(|| {
            let tar = busybox_rootfs_tar(&docker.dir);
            run_ok(
                docker
                    .docker_cmd()
                    .arg("import")
                    .args(["--change", "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
                    .args(["--change", r#"CMD ["sh"]"#])
                    .arg(&tar)
                    .arg(DOCKER_BUSYBOX_IMAGE),
            );
            let _ = fs::remove_file(&tar);
            DOCKER_BUSYBOX_IMAGE.to_string()
        })
        .clone()
}

fn ip_cmd() -> Command {
    Command::new(require("ip"))
}

/// Deletes `mrt<pid>-<n>` bridges whose process is gone (left by a test process that was
/// SIGKILLed before its watchdog could run).
fn remove_stale_bridges() {
    let Ok(out) = ip_cmd()
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let Some(rest) = name.strip_prefix("mrt") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip_cmd().args(["link", "del", name]).output();
        }
    }
}

/// Creates bridge `name` with the first free 10.213.x.1/24 and brings it up.
fn create_bridge(name: &str) -> Result<String, String> {
    let addrs = ip_cmd()
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("ip addr: {e}"))?;
    let routes = ip_cmd()
        .args(["-4", "route", "show"])
        .output()
        .map_err(|e| format!("ip route: {e}"))?;
    let used = format!(
        "{}\n{}",
        String::from_utf8_lossy(&addrs.stdout),
        String::from_utf8_lossy(&routes.stdout)
    );
    let start = (std::process::id() as usize * 7 + COUNTER.fetch_add(1, Ordering::SeqCst)) % 250;
    let x = (0..250)
        .map(|i| (start + i) % 250 + 1)
        .find(|x| !used.contains(&format!("10.213.{x}.")))
        .ok_or("no free 10.213.x.0/24 for the test bridge")?;
    let cidr = format!("10.213.{x}.1/24");
    let steps: [&[&str]; 3] = [
        &["link", "add", "name", name, "type", "bridge"],
        &["addr", "add", &cidr, "dev", name],
        &["link", "set", name, "up"],
    ];
    for args in steps {
        let out = ip_cmd()
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(cidr)
}

// ---------------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------------

/// A private containerd (config version 2, CRI disabled) with root, state and sockets under
/// `/tmp/migrun-containerd-*`, used through `ctr` with a unique namespace (`migrun-<pid>-<n>`),
/// so runc state (`/run/containerd/runc/<ns>`) never clashes with a system containerd.
pub struct PrivateContainerd {
    dir: PathBuf,
    address: PathBuf,
    namespace: String,
    ctr: PathBuf,
    /// `ctr run --fifo-dir`: the Debian 13 root's ctr and containerd each have a private /run, so the
    /// stdio fifos (default /run/containerd/fifo) go where both see them.
    fifo_dir: Option<PathBuf>,
    child: Mutex<Option<Child>>,
    guard: Guard,
    image: OnceLock<String>,
}

static SHARED_CONTAINERD: OnceLock<Result<PrivateContainerd, String>> = OnceLock::new();
static SHARED_CONTAINERD_TRIXIE: OnceLock<Result<PrivateContainerd, String>> = OnceLock::new();

/// [`shared_containerd`] of engine set `set` (one per set and test binary).
pub fn shared_containerd_in(set: EngineSet) -> &'static PrivateContainerd {
    let cell = match set {
        EngineSet::Bookworm => &SHARED_CONTAINERD,
        EngineSet::Trixie => &SHARED_CONTAINERD_TRIXIE,
    };
    let r = cell.get_or_init(|| {
        register_atexit();
        PrivateContainerd::try_start_in(set, "", false)
    });
    match r {
        Ok(c) => c,
        Err(e) => panic!("shared containerd of {} failed to start: {e}", set.name()),
    }
}

/// One containerd shared by all tests of this test binary; stopped when the process exits.
pub fn shared_containerd() -> &'static PrivateContainerd {
    let r = SHARED_CONTAINERD.get_or_init(|| {
        register_atexit();
        PrivateContainerd::try_start_with_config("")
    });
    match r {
        Ok(c) => c,
        Err(e) => panic!("shared containerd failed to start: {e}"),
    }
}

impl PrivateContainerd {
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`start`](Self::start), with `extra_toml` appended to the generated config.toml.
    pub fn start_with_config(extra_toml: &str) -> Self {
        Self::try_start_with_config(extra_toml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with_config(extra_toml: &str) -> Result<Self, String> {
        Self::try_start_in(EngineSet::Bookworm, extra_toml, false)
    }

    /// A private containerd of `set` with its CRI plugin on (configured by `extra_toml`), for a CRI client.
    pub fn start_with_cri(set: EngineSet, extra_toml: &str) -> Self {
        Self::try_start_in(set, extra_toml, true).unwrap_or_else(|e| panic!("{}: {e}", set.name()))
    }

    fn try_start_in(set: EngineSet, extra_toml: &str, cri: bool) -> Result<Self, String> {
        require_root();
        let containerd = set.bin("containerd");
        let ctr = set.bin("ctr");
        let runc = require("runc");
        if set == EngineSet::Bookworm {
            require("containerd-shim-runc-v2");
        }
        let dir = private_dir("containerd");
        let namespace = unique_name("migrun");
        let address = dir.join("containerd.sock");
        let d = dir.display();
        let disabled = if cri {
            "[]"
        } else {
            r#"["io.containerd.grpc.v1.cri"]"#
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = {disabled}

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

{extra_toml}
"#
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).map_err(|e| format!("write config.toml: {e}"))?;
        let runc_root = format!("/run/containerd/runc/{namespace}");
        // Kill and delete tasks through containerd first, so the shims exit cleanly (and remove
        // their sockets under /run/containerd/s).
        let c = sh_join([
            ctr.as_os_str(),
            OsStr::new("--address"),
            address.as_os_str(),
            OsStr::new("--namespace"),
            OsStr::new(&namespace),
        ]);
        let pre = format!(
            "for t in $({c} tasks ls -q); do {c} tasks kill -s SIGKILL \"$t\"; done; \
             for t in $({c} tasks ls -q); do {c} tasks delete -f \"$t\"; done; \
             for t in $({c} containers ls -q); do {c} containers delete \"$t\"; done"
        );
        let guard = Guard::spawn(&[
            ("WD_PRE", pre),
            ("WD_DIR", dir.display().to_string()),
            ("WD_PIDFILE", dir.join("daemon.pid").display().to_string()),
            ("WD_GRACE", "100".to_string()),
            ("WD_RUNC", runc.display().to_string()),
            ("WD_RUNC_ROOTS", runc_root.clone()),
            ("WD_RM", runc_root),
        ]);
        let log = dir.join("containerd.log");
        let mut cmd = Command::new(containerd);
        cmd.arg("--config").arg(&config_path);
        let child = spawn_daemon(cmd, &log, &dir.join("daemon.pid"));
        let c = PrivateContainerd {
            fifo_dir: (set == EngineSet::Trixie).then(|| dir.join("fifo")),
            dir,
            address,
            namespace,
            ctr,
            child: Mutex::new(Some(child)),
            guard,
            image: OnceLock::new(),
        };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(60), || {
            if let Ok(Some(st)) = c.child.lock().unwrap().as_mut().unwrap().try_wait() {
                exited = Some(st);
                return true;
            }
            c.ctr_cmd()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if !up || exited.is_some() {
            let why = match exited {
                Some(st) => format!("containerd exited with {st}"),
                None => "containerd did not answer `ctr version` within 60 s".to_string(),
            };
            let msg = format!(
                "{why}\n--- {} (tail) ---\n{}",
                log.display(),
                log_tail(&log, 60)
            );
            drop(c);
            return Err(msg);
        }
        Ok(c)
    }

    /// The containerd gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The containerd namespace every `ctr_cmd` uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// `ctr --address <sock> --namespace <ns>`; append the subcommand.
    pub fn ctr_cmd(&self) -> Command {
        self.ctr_cmd_in(&self.namespace)
    }

    /// `ctr --address <sock> --namespace <namespace>` (e.g. `k8s.io`, the CRI plugin's).
    pub fn ctr_cmd_in(&self, namespace: &str) -> Command {
        let mut c = Command::new(&self.ctr);
        c.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace);
        c
    }

    /// Imports (once) [`CONTAINERD_BUSYBOX_IMAGE`] from a hand-built OCI layout tarball
    /// ([`busybox_oci_tar`]) with `ctr images import` (unpacked to overlayfs). Returns its name.
    pub fn busybox_image(&self) -> String {
        self.image
            .get_or_init(|| {
                let tar = busybox_oci_tar(&self.dir);
                run_ok(self.ctr_cmd().args(["images", "import"]).arg(&tar));
                let _ = fs::remove_file(&tar);
                CONTAINERD_BUSYBOX_IMAGE.to_string()
            })
            .clone()
    }

    /// `ctr run --rm --runtime io.containerd.runc.v2 [--runc-binary <runc_binary>] <flags...>
    /// <busybox image> <id> <args...>`. `runc_binary` is a runc-compatible binary (e.g. a shim
    /// that patches config.json on `create` and execs runc); containerd 1.6's `ctr run` passes it
    /// to the runc v2 shim as `options.BinaryName`. `flags` go before the image (e.g. `--env`,
    /// `--mount`, `--label`). The busybox image is imported first if needed.
    pub fn run_cmd(
        &self,
        id: &str,
        runc_binary: Option<&Path>,
        flags: &[&str],
        args: &[&str],
    ) -> Command {
        let image = self.busybox_image();
        let mut c = self.ctr_cmd();
        c.args(["run", "--rm", "--runtime", "io.containerd.runc.v2"]);
        if let Some(d) = &self.fifo_dir {
            c.arg("--fifo-dir").arg(d);
        }
        if let Some(bin) = runc_binary {
            c.arg("--runc-binary").arg(bin);
        }
        c.args(flags).arg(image).arg(id).args(args);
        c
    }

    /// Stops containerd, deletes leftover containers and the directory (idempotent).
    pub fn stop(&self) {
        if self.guard.owner == std::process::id() {
            self.guard.finish();
            reap(&self.child);
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------

/// Rootful podman with a private store: `--root`, `--runroot`, `--tmpdir` under
/// `/tmp/migrun-podman-*`, `--cgroup-manager=cgroupfs`, `--events-backend=file`, optional
/// `--hooks-dir` (only the given ones: the system hooks dirs are then ignored) and `--runtime`.
pub struct Podman {
    bin: PathBuf,
    dir: PathBuf,
    hooks_dirs: Vec<PathBuf>,
    runtime: Option<PathBuf>,
    guard: Guard,
    image: OnceLock<String>,
}

impl Podman {
    pub fn new() -> Self {
        require("conmon");
        Self::with_bin(require("podman"))
    }

    /// Rootful podman of engine set `set`; with `cdi`, that host dir is its /etc/cdi (see
    /// [`EngineSet::bin_with_cdi`]).
    pub fn new_in(set: EngineSet, cdi: Option<&Path>) -> Self {
        Self::with_bin(set.bin_with_cdi("podman", cdi))
    }

    fn with_bin(bin: PathBuf) -> Self {
        require_root();
        let dir = private_dir("podman");
        for d in ["root", "runroot", "tmp"] {
            fs::create_dir_all(dir.join(d)).expect("mkdir podman dirs");
        }
        let pre = format!(
            "{} rm --all --force --time 0",
            sh_join(Self::global_args(&bin, &dir, &[], None))
        );
        // podman runs runc with its default --root (/run/runc, ids are 64-hex and unique), so the
        // containers are removed through podman itself; conmon etc. are then swept by path.
        let guard = Guard::spawn(&[("WD_DIR", dir.display().to_string()), ("WD_PRE", pre)]);
        Podman {
            bin,
            dir,
            hooks_dirs: Vec::new(),
            runtime: None,
            guard,
            image: OnceLock::new(),
        }
    }

    /// Adds a `--hooks-dir` (OCI hooks.d JSON files, version 1.0.0).
    pub fn hooks_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hooks_dirs.push(dir.into());
        self
    }

    /// Uses `--runtime <path>` (an OCI runtime such as a runc-compatible shim) instead of podman's
    /// default runtime.
    pub fn runtime(mut self, path: impl Into<PathBuf>) -> Self {
        self.runtime = Some(path.into());
        self
    }

    fn global_args(
        bin: &Path,
        dir: &Path,
        hooks: &[PathBuf],
        runtime: Option<&Path>,
    ) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![bin.into()];
        let mut kv = |k: &str, v: &Path| {
            a.push(k.into());
            a.push(v.into());
        };
        kv("--root", &dir.join("root"));
        kv("--runroot", &dir.join("runroot"));
        kv("--tmpdir", &dir.join("tmp"));
        for h in hooks {
            kv("--hooks-dir", h);
        }
        if let Some(r) = runtime {
            kv("--runtime", r);
        }
        a.push("--cgroup-manager=cgroupfs".into());
        a.push("--events-backend=file".into());
        a
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `podman <private store flags>`; append the subcommand.
    pub fn podman_cmd(&self) -> Command {
        let args = Self::global_args(
            &self.bin,
            &self.dir,
            &self.hooks_dirs,
            self.runtime.as_deref(),
        );
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]).env("PATH", sbin_path());
        c
    }

    /// `podman ... run --rm --pull never --network none --ulimit nofile=1024:1024
    /// --ulimit nproc=1024:1024`; append options, image and command.
    pub fn run_cmd(&self) -> Command {
        self.run_cmd_with_network("none")
    }

    /// Like [`run_cmd`](Self::run_cmd) with another `--network` (e.g. `host`).
    pub fn run_cmd_with_network(&self, network: &str) -> Command {
        let mut c = self.podman_cmd();
        c.args(["run", "--rm", "--pull", "never", "--network", network])
            .args(PODMAN_ULIMITS);
        c
    }

    /// Imports (once) [`PODMAN_BUSYBOX_IMAGE`] with `podman import` of a busybox rootfs tar.
    pub fn busybox_image(&self) -> String {
        self.image
            .get_or_init(|| {
                let tar = busybox_rootfs_tar(&self.dir);
                run_ok(
                    self.podman_cmd()
                        .arg("import")
                        .args(["--change", "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
                        .args(["--change", r#"CMD ["sh"]"#])
                        .arg(&tar)
                        .arg(PODMAN_BUSYBOX_IMAGE),
                );
                let _ = fs::remove_file(&tar);
                PODMAN_BUSYBOX_IMAGE.to_string()
            })
            .clone()
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.guard.finish();
    }
}

/// Runs the cleanup for a directory left by a dead test process (not normally needed: the
/// watchdogs do this). `dir` must be one of the `/tmp/migrun-*` dirs made here.
pub fn cleanup_dir(dir: &Path) {
    cleanup_now(&[("WD_DIR", dir.display().to_string())]);
}
