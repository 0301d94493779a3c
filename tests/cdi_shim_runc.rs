//! The runtime shim in front of plain runc with `hook_inject = "cdi"` and no NVIDIA runtime anywhere: the shim writes the lease's CDI edits into config.json, so the container sees its MIG UUID and the parent, capability, control and UVM device nodes with the driver's numbers; the spec lives exactly as long as the lease. With `hook_inject = "env"` the same container gets the env only. Needs root, runc and busybox-static (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::unique_name;
use hooks_common::shim_runc::ShimRunc;
use serde_json::json;
use std::fs;

use std::process::Stdio;
use std::time::{Duration, Instant};

/// What the container writes into its rootfs: the env, then each node as `stat` sees it.
const SCRIPT: &str = "{ echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE; \
    for n in nvidia0 nvidia-caps/nvidia-cap* nvidiactl nvidia-uvm nvidia-uvm-tools; \
    do stat -c '%n %F %t:%T %a' /dev/$n 2>&1; done; } > /out";

/// The shim with `hook_inject = <how>`: what this file adds to the shared [`ShimRunc`].
fn shim(hook_inject: &str) -> ShimRunc {
    ShimRunc::with("h100-80gb:1", &format!("hook_inject = \"{hook_inject}\"\n"))
}

impl ShimRunc {
    fn spec_files(&self) -> Vec<String> {
        match fs::read_dir(self.sim.state_dir().join("cdi")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// create through the shim, start, wait for the container to stop, delete through the shim;
    /// returns what the container wrote and the lease it held (id, MIG UUID, GI, CI).
    fn run_container(&self, name: &str) -> (String, (u64, String, u32, u32)) {
        let b = self.bundle(name, &["sh", "-c", SCRIPT], |c| {
            c["annotations"] = json!({"migrun.profile": "1g.10gb"});
        });
        let id = unique_name("cdi-shim");
        let bundle = b.to_str().unwrap();
        let (code, err) = self.run(&["create", "--bundle", bundle, &id], &b);
        assert_eq!(code, Some(0), "{err}\nlog:\n{}", self.sim.log());
        let leases = self.sim.leases();
        assert_eq!(leases.len(), 1);
        let l = &leases[0];
        let lease = (l.id, l.mig_uuid.clone(), l.gi, l.ci);
        assert_eq!(
            self.spec_files(),
            [format!("migrun-mig-{}.json", l.id)],
            "the spec is there while the lease is held"
        );
        let started = self
            .runc
            .cmd()
            .args(["start", &id])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(started.success());
        let t0 = Instant::now();
        loop {
            let state = self.runc.cmd().args(["state", &id]).output().unwrap();
            let s: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap_or_default();
            if s["status"] == "stopped" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "container {id} never stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (code, err) = self.run(&["delete", &id], &b);
        assert_eq!(code, Some(0), "{err}");
        let out = fs::read_to_string(b.join("rootfs/out")).unwrap();
        (out, lease)
    }
}

#[test]
fn plain_runc_gets_the_slice_s_device_nodes_from_the_shim() {
    let s = shim("cdi");
    assert!(
        migrun::engine::runtime::nvidia_hook(Some(std::ffi::OsStr::new(
            "/usr/sbin:/usr/bin:/sbin:/bin"
        )))
        .is_none(),
        "this test is about a host without NVIDIA's runtime"
    );
    let (out, (lease, mig, gi, ci)) = s.run_container("b1");
    // GPU 0 (device minor 0): the GI's capability is 3 + 9 * GI, its CI's right after.
    let gi_cap = 3 + 9 * gi;
    let ci_cap = gi_cap + 1 + ci;
    let mut want = vec![
        format!("{mig} {lease}"),
        "/dev/nvidia0 character special file c3:0 666".to_string(),
    ];
    let mut caps = [gi_cap, ci_cap];
    caps.sort_by_key(|c| c.to_string());
    for c in caps {
        want.push(format!(
            "/dev/nvidia-caps/nvidia-cap{c} character special file f1:{c:x} 444"
        ));
    }
    want.extend(
        [
            "/dev/nvidiactl character special file c3:ff 666",
            "/dev/nvidia-uvm character special file ee:0 666",
            "/dev/nvidia-uvm-tools character special file ee:1 666",
        ]
        .map(String::from),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        want,
        "log:\n{}",
        s.sim.log()
    );
    assert!(s.sim.settled_leases().is_empty(), "poststop released it");
    assert!(s.sim.instances().is_empty());
    assert!(s.spec_files().is_empty(), "release removed the spec");
}

#[test]
fn with_env_injection_the_container_gets_the_env_and_no_nodes() {
    let s = shim("env");
    let (out, (lease, mig, _, _)) = s.run_container("b2");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("{mig} {lease}").as_str()));
    assert!(
        out.contains("/dev/nvidia-caps/nvidia-cap*") && !out.contains("character special"),
        "no device nodes: {out}"
    );
    assert!(s.sim.settled_leases().is_empty());
    assert!(s.spec_files().is_empty(), "the spec went with the lease");
}
