//! Engine sets for the engine matrix (tests/engines_matrix.rs): which dockerd, docker, containerd, ctr,
//! podman, runc and crun a test drives. `Bookworm` is the host's own Debian 12 engines; `Trixie` is Debian
//! 13's, run from the root `scripts/trixie-root.sh` builds (a chroot in a private mount namespace) through
//! small wrapper scripts, so every helper in engines.rs drives either set by path alone.
//! Owns only those wrappers; it must not build the root (the setup does) and never skips: a missing root
//! is a test failure naming the fix.
#![allow(dead_code)]

use super::{docker_cli, require, run_output};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One generation of container engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineSet {
    /// The host's Debian 12 engines: dockerd 20.10, containerd 1.6, podman 4.3, runc 1.1.
    Bookworm,
    /// Debian 13's from the cached root: dockerd 26, containerd 1.7, podman 5, runc 1.1, crun 1.2x.
    Trixie,
}

/// The repository (the migrun package's tests include this file; so does migrun-bench, whose manifest dir
/// is crates/migrun-bench and which uses only the host's set).
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MIGRUN_BIN: Option<&str> = option_env!("CARGO_BIN_EXE_migrun");

impl EngineSet {
    pub const ALL: [EngineSet; 2] = [EngineSet::Bookworm, EngineSet::Trixie];

    /// The set's name as failure messages and the printed matrix show it.
    pub fn name(self) -> &'static str {
        match self {
            EngineSet::Bookworm => "bookworm (host, Debian 12)",
            EngineSet::Trixie => "trixie (Debian 13 root)",
        }
    }

    /// The OCI runtimes the set's podman is tested with.
    pub fn oci_runtimes(self) -> &'static [&'static str] {
        match self {
            // Debian 12's podman is tested with runc only: crun is not part of the host's engines.
            EngineSet::Bookworm => &["runc"],
            EngineSet::Trixie => &["runc", "crun"],
        }
    }

    /// Whether the set's Debian ships the Compose v2 CLI plugin (Debian 12's docker-compose is the old
    /// Python 1.29 tool, which knows no CDI device requests).
    pub fn has_compose_plugin(self) -> bool {
        self == EngineSet::Trixie
    }

    /// The path of engine binary `name` in this set: the host's own binary, or a wrapper that runs the
    /// root's binary of that name. Panics (test failure) when it is missing.
    pub fn bin(self, name: &str) -> PathBuf {
        self.bin_with_cdi(name, None)
    }

    /// Like [`bin`](Self::bin), with `cdi` (a host dir) seen at `/etc/cdi` by the binary and all it
    /// starts: podman reads CDI specs only from /etc/cdi and /var/run/cdi (4.3 and 5.4 have no flag for
    /// another dir), and a test's specs must stay its own.
    pub fn bin_with_cdi(self, name: &str, cdi: Option<&Path>) -> PathBuf {
        match (self, cdi) {
            (EngineSet::Bookworm, None) if name == "docker" => docker_cli(),
            (EngineSet::Bookworm, None) => require(name),
            (EngineSet::Bookworm, Some(dir)) => {
                let real = require(name);
                // The mount point is created once on the host (an empty /etc/cdi is what an engine host
                // without specs has anyway); the bind exists only in the command's own namespace.
                fs::create_dir_all("/etc/cdi").expect("mkdir /etc/cdi");
                let body = format!(
                    "exec unshare --mount --propagation private -- /bin/sh -ec \
                     'mount --bind \"$0\" /etc/cdi; exec \"$@\"' {} {} \"$@\"\n",
                    q(dir),
                    q(&real)
                );
                wrapper(&format!("{name}-cdi-{}", key(&body)), &body)
            }
            (EngineSet::Trixie, cdi) => {
                let script = Path::new(REPO).join("scripts/trixie-root.sh");
                let st = run_output(Command::new("bash").arg(&script).arg("path"));
                assert!(
                    st.status.success(),
                    "engine set {}: {} (run scripts/setup-test-host.sh as root)",
                    self.name(),
                    String::from_utf8_lossy(&st.stderr).trim()
                );
                let mut args = format!("exec /bin/bash {} run", q(&script));
                for dir in binds() {
                    args.push_str(&format!(" --bind {}", q(&dir)));
                }
                if let Some(dir) = cdi {
                    args.push_str(&format!(
                        " --mount {}",
                        q(format!("{}:/etc/cdi", dir.display()))
                    ));
                }
                let body = format!("{args} -- {name} \"$@\"\n");
                wrapper(&format!("{name}-{}", key(&body)), &body)
            }
        }
    }

    /// The version line `bin --version` prints (for the matrix the tests print and docs/engines.md).
    pub fn version(self, name: &str) -> String {
        let out = run_output(Command::new(self.bin(name)).arg("--version"));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().next().unwrap_or("").trim().to_string()
    }
}

/// The host dirs the root must see at the same paths: the repository (hooks.d files, scripts), the dir
/// of the migrun binary under test (a shim or hook the engines start), and the temp dir when it is not
/// under /tmp (which the root always shares).
fn binds() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(REPO)];
    if let Some(bin_dir) = MIGRUN_BIN.and_then(|b| Path::new(b).parent()) {
        if !bin_dir.starts_with(REPO) {
            dirs.push(bin_dir.to_path_buf());
        }
    }
    let tmp = std::env::temp_dir();
    if !tmp.starts_with("/tmp") {
        dirs.push(tmp);
    }
    dirs
}

fn q(p: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", p.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

fn key(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Writes `/tmp/migrun-engine-bin/<file>` (temp file + rename: tests in other processes use the same
/// wrappers at the same time) and returns its path. The name carries the hash of the body, so a
/// wrapper's content never changes under a running test.
fn wrapper(file: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new("/tmp/migrun-engine-bin");
    fs::create_dir_all(dir).expect("mkdir /tmp/migrun-engine-bin");
    // The tests run these as root: a dir in /tmp that someone else made (or may write into) is refused.
    let md = fs::symlink_metadata(dir).expect("stat /tmp/migrun-engine-bin");
    assert!(
        md.is_dir() && md.uid() == nix::unistd::geteuid().as_raw() && md.mode() & 0o022 == 0,
        "{dir:?} is not a directory owned by this user and writable by it alone: remove it and rerun"
    );
    let path = dir.join(file);
    if path.is_file() {
        return path;
    }
    let tmp = dir.join(format!(".{file}.{}", std::process::id()));
    fs::write(&tmp, format!("#!/bin/sh\n{body}")).expect("write engine wrapper");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod engine wrapper");
    fs::rename(&tmp, &path).expect("rename engine wrapper");
    path
}
