//! The runtime shim in front of real runc, shared by tests/hooks_shim_runc.rs and tests/cdi_shim_runc.rs:
//! a simulated machine, a `migrun-runtime` symlink to the binary under test, a config naming the private
//! runc as the next runtime, and busybox bundles. What each test then asserts stays in its own file.

use super::{migrun_bin, Sim};
use crate::common::engines::{busybox_bundle, patch_bundle_config, Runc};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `migrun-runtime` with runc (the private root of `runc`) as its next runtime, on a simulated machine.
pub struct ShimRunc {
    pub sim: Sim,
    pub runc: Runc,
    pub link: PathBuf,
    pub config: PathBuf,
}

impl ShimRunc {
    /// On the simulated machine `spec`; `extra_config` goes into migrun's config after the
    /// `runtime = "<runc>"` line (e.g. `hook_inject = "cdi"\n`).
    pub fn with(spec: &str, extra_config: &str) -> ShimRunc {
        let sim = Sim::new(spec);
        let runc = Runc::new();
        let dir = sim.tmp.path().join("shim");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("migrun-runtime");
        std::os::unix::fs::symlink(migrun_bin(), &link).unwrap();
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!("runtime = \"{}\"\n{extra_config}", runc.bin().display()),
        )
        .unwrap();
        ShimRunc {
            sim,
            runc,
            link,
            config,
        }
    }

    /// `migrun-runtime --root <private> ARGS`, stdin and stdout closed (a created container inherits
    /// them), stderr to a file so waiting for the shim never waits for the container; (exit code, stderr).
    pub fn run(&self, args: &[&str], cwd: &Path) -> (Option<i32>, String) {
        let err = tempfile::NamedTempFile::new().unwrap();
        let status = Command::new(&self.link)
            .env_clear()
            .envs(self.sim.env())
            .env("MIGRUN_CONFIG", &self.config)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("--root")
            .arg(self.runc.root())
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err.reopen().unwrap())
            .status()
            .unwrap();
        (status.code(), fs::read_to_string(err.path()).unwrap())
    }

    /// A busybox bundle under the machine's temp dir running `args`, its config shaped by `f`.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        f: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let b = busybox_bundle(&self.sim.tmp.path().join(name), args);
        patch_bundle_config(&b, f);
        b
    }

    /// `runc delete --force ID` (the poststop hook runs as runc destroys it), insisting on success.
    pub fn force_delete(&self, id: &str) {
        let out = self
            .runc
            .cmd()
            .args(["delete", "--force", id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
