//! Helpers for the hook and shim tests (tests/hooks_*.rs): a simulated GPU machine in a private
//! state dir, migrun hook entries carrying that state in `hook.env`, a shim wrapper for engines, and
//! a stand-in for nvidia-container-runtime-hook. Engines themselves come from tests/common/engines.rs.
#![allow(dead_code)]

pub mod shim_runc;

use migrun::gpu::sim::SimBackend;
use migrun::gpu::{Backend, GpuInstance};
use migrun::lease::{Lease, LeaseState};
use migrun::statedir::StateDir;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The migrun binary under test.
pub fn migrun_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_migrun"))
}

/// A simulated machine whose state (and migrun's log) lives in a private, not yet created dir.
pub struct Sim {
    pub tmp: tempfile::TempDir,
    pub spec: String,
}

impl Sim {
    pub fn new(spec: &str) -> Sim {
        Sim {
            tmp: tempfile::tempdir().expect("tempdir"),
            spec: spec.to_string(),
        }
    }

    /// migrun's state dir (created by migrun on first use, so tests can check it never was).
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// The env that points migrun at this machine.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("MIGRUN_SIMULATE".into(), self.spec.clone()),
            (
                "MIGRUN_STATE_DIR".into(),
                self.state_dir().display().to_string(),
            ),
        ]
    }

    /// `K=V` strings for an OCI `hook.env` or a hooks.d `env`.
    pub fn env_strings(&self) -> Vec<String> {
        self.env().iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// A config.json hook entry running `migrun hook <stage>` on this machine.
    pub fn hook(&self, stage: &str) -> Value {
        json!({
            "path": migrun_bin(),
            "args": ["migrun", "hook", stage],
            "env": self.env_strings(),
        })
    }

    /// `migrun <args>` on this machine, with a clean env.
    pub fn migrun(&self) -> Command {
        let mut c = Command::new(migrun_bin());
        c.env_clear().envs(self.env());
        c
    }

    /// Run `migrun hook <stage>` with `stdin`.
    pub fn run_hook(&self, stage: &str, stdin: &[u8]) -> Output {
        run_with_stdin(self.migrun().args(["hook", stage]), stdin)
    }

    fn dir(&self) -> StateDir {
        StateDir::open(self.state_dir()).expect("open state dir")
    }

    pub fn leases(&self) -> Vec<Lease> {
        migrun::alloc::leases(&self.dir()).expect("leases")
    }

    /// The leases once the background destroys a container's end started have run: a container's end returns
    /// before its instance is destroyed (`release_wait_ms` is 0 by default), so a test that checks what the end
    /// left waits for the workers first. It waits while a lease is draining on an instance no process uses (one
    /// a worker destroys), at most 20 s; a draining lease on a busy instance is returned at once.
    pub fn settled_leases(&self) -> Vec<Lease> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let leases = self.leases();
            let spec = self.spec.parse().expect("sim spec");
            let state = SimBackend::open(&self.dir(), spec)
                .and_then(|mut b| b.snapshot())
                .expect("sim snapshot");
            let busy = |l: &Lease| {
                state.gpus.iter().any(|g| {
                    g.info.uuid == l.gpu_uuid
                        && g.instances.iter().any(|i| i.id == l.gi && i.processes > 0)
                })
            };
            let pending = leases
                .iter()
                .any(|l| l.state == LeaseState::Draining && !busy(l));
            if !pending || std::time::Instant::now() >= until {
                return leases;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// GPU instances on GPU 0 of the simulated machine.
    pub fn instances(&self) -> Vec<GpuInstance> {
        let spec = self.spec.parse().expect("sim spec");
        let mut b = SimBackend::open(&self.dir(), spec).expect("sim backend");
        b.instances(0).expect("instances")
    }

    /// migrun's hook log (`<state dir>/migrun.log`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.state_dir().join("migrun.log")).unwrap_or_default()
    }

    /// The shim called directly as an engine calls it: `link` (a `migrun-runtime` symlink) with `args`,
    /// only this machine's env, the migrun config `config` (which names the next runtime) and a plain PATH.
    pub fn shim_command(&self, link: &Path, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(link);
        c.env_clear()
            .envs(self.env())
            .env("MIGRUN_CONFIG", config)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(args);
        c
    }

    /// A `migrun-runtime` for engines: a symlink to the binary under test (so argv[0] picks the
    /// shim) behind a wrapper that sets this machine's env, since engines start runtimes with their
    /// own environment. Returns the wrapper's path.
    pub fn shim(&self) -> PathBuf {
        let dir = self.tmp.path().join("bin");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("migrun-runtime");
        if !link.exists() {
            std::os::unix::fs::symlink(migrun_bin(), &link).unwrap();
        }
        let wrapper = dir.join("migrun-runtime-test");
        let exports: String = self
            .env()
            .iter()
            .map(|(k, v)| format!("export {k}='{v}'\n"))
            .collect();
        write_exec(
            &wrapper,
            &format!("#!/bin/sh\n{exports}exec '{}' \"$@\"\n", link.display()),
        );
        wrapper
    }
}

/// Write an executable file.
pub fn write_exec(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run a command with `stdin` piped in; returns its output.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut sin = child.stdin.take().unwrap();
    let _ = sin.write_all(stdin);
    drop(sin);
    child.wait_with_output().unwrap()
}

/// A stand-in for nvidia-container-runtime-hook: a busybox sh script that, like the real hook,
/// reads the state JSON on stdin and re-reads `<bundle>/config.json`, and records the
/// NVIDIA_VISIBLE_DEVICES it finds there in `record` (empty when there is none).
pub fn nvidia_hook_standin(dir: &Path, record: &Path) -> Value {
    let bb = crate::common::engines::busybox_static();
    let bb = bb.display();
    let script = dir.join("nvidia-hook-standin");
    write_exec(
        &script,
        &format!(
            r#"#!{bb} sh
# runc gives hooks no PATH: call every tool through busybox.
state=$({bb} cat)
bundle=$(echo "$state" | {bb} sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
{bb} grep -o 'NVIDIA_VISIBLE_DEVICES=[^"]*' "$bundle/config.json" | {bb} sed 's/^NVIDIA_VISIBLE_DEVICES=//' > '{}'
exit 0
"#,
            record.display()
        ),
    );
    json!({"path": script, "args": ["nvidia-container-runtime-hook", "prestart"]})
}

/// The one line a failing hook prints on stderr (panics unless there is exactly one).
pub fn one_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {s:?}");
    lines[0].to_string()
}

/// The NVIDIA_VISIBLE_DEVICES values in a config.
pub fn nvd_of(config: &Value) -> Vec<String> {
    config["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str())
                .filter_map(|e| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}
