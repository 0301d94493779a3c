//! podman resolves migrun's CDI devices: a spec written by migrun into /var/run/cdi for a fake slice (host facts from the H200 capture, the toolkit's edits from a fake toolkit spec) gives the container the MIG UUID, the capability nodes and the toolkit's mount, by lease id, name and MIG UUID, next to foreign `nvidia.com/gpu` specs. Needs root and podman; fails otherwise.
//!
//! podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi (no flag for another dir), so the
//! test writes into /var/run/cdi under names unique to this process and removes them on drop.

mod common;

use common::engines::{run_ok, Podman};
use migrun::cdi::{self, store, toolkit};
use migrun::gpu::hostfacts::HostFacts;
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

/// Removes the spec files this test wrote, also when it fails, and /var/run/cdi itself when the
/// test created it and nothing else is in it.
struct Written {
    files: Vec<PathBuf>,
    created_dir: bool,
}

impl Drop for Written {
    fn drop(&mut self) {
        for p in &self.files {
            let _ = fs::remove_file(p);
        }
        if self.created_dir {
            // Fails, as it should, while another spec is in the directory.
            let _ = fs::remove_dir(store::DYNAMIC_DIR);
        }
    }
}

/// A temp root with the H200 capture laid out as `/proc`.
fn h200_root() -> tempfile::TempDir {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h200-141gb-caps");
    let read = |f: &str| fs::read_to_string(fixtures.join(f)).unwrap();
    let detail = read("caps-detail.txt");
    // The GPU's `information` file is the part of caps-detail.txt from `Model:` to the `GPU Excluded:` line.
    let start = detail.find("Model:").unwrap();
    let end = detail.find("GPU Excluded:").unwrap();
    let end = end + detail[end..].find('\n').unwrap();
    let root = tempfile::tempdir().unwrap();
    for (rel, body) in [
        ("proc/driver/nvidia-caps/mig-minors", read("mig-minors.txt")),
        ("proc/devices", read("proc-devices.txt")),
        (
            "proc/driver/nvidia/gpus/0000:00:06.0/information",
            detail[start..end].to_string(),
        ),
    ] {
        let p = root.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    root
}

/// A fake toolkit spec: the common edits mount a file, set an env var and run a createRuntime hook
/// that leaves a mark, so the test sees each kind of copied edit arrive.
fn fake_toolkit(dir: &Path) -> (PathBuf, PathBuf) {
    let driver_file = dir.join("driver-file");
    fs::write(&driver_file, "from the fake toolkit\n").unwrap();
    let mark = dir.join("hook-ran");
    let spec = json!({
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [{ "name": "all", "containerEdits": { "deviceNodes": [{ "path": "/dev/nvidia0" }] } }],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void", "MIGRUN_TEST_TOOLKIT=yes"],
            "deviceNodes": [{ "path": "/dev/nvidiactl" }],
            "mounts": [{
                "hostPath": driver_file,
                "containerPath": "/mounted/file",
                "options": ["ro", "nosuid", "nodev", "bind"]
            }],
            "hooks": [{
                "hookName": "createRuntime",
                "path": "/bin/sh",
                "args": ["sh", "-c", format!("touch {}", mark.display())]
            }]
        }
    });
    let path = dir.join("nvidia.json");
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    (path, mark)
}

/// A foreign spec of the toolkit's kind with devices `names`, written into /var/run/cdi.
fn foreign_spec(file: &str, names: &[String]) -> PathBuf {
    let devices: Vec<_> = names
        .iter()
        .map(|n| json!({ "name": n, "containerEdits": { "env": [format!("FOREIGN={n}")] } }))
        .collect();
    let spec = json!({ "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": devices });
    let path = Path::new(store::DYNAMIC_DIR).join(file);
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path
}

#[test]
fn podman_resolves_migrun_devices_by_id_name_and_uuid() {
    let podman = Podman::new();
    let image = podman.busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let pid = std::process::id();

    let root = h200_root();
    let facts = HostFacts::read_from(root.path()).unwrap();
    let gpu_minor = facts
        .gpu_minor("GPU-934cbb29-3641-df72-0b45-d4cbd888fb8f")
        .unwrap();
    let (toolkit_spec, mark) = fake_toolkit(tmp.path());
    let (found, common) = toolkit::discover(&[tmp.path().join("none.yaml"), toolkit_spec.clone()])
        .unwrap()
        .unwrap();
    assert_eq!(found, toolkit_spec);

    // Unique per process: lease ids far above any real registry's, a name and a UUID with the pid.
    let lease = 4_000_000_000 + u64::from(pid);
    let name = format!("cditest-{pid}");
    let uuid = format!("MIG-c0ffee00-0000-5000-8000-{pid:012}");
    let slice = cdi::Slice {
        lease,
        name: Some(name.clone()),
        mig_uuid: uuid.clone(),
        gpu_minor,
        gi: 1,
        ci: 0,
    };
    let spec = cdi::build(&slice, &facts, Some(&common)).unwrap();
    let dir = Path::new(store::DYNAMIC_DIR);
    let mut written = Written {
        files: Vec::new(),
        created_dir: !dir.exists(),
    };
    written.files.push(store::write(dir, lease, &spec).unwrap());
    assert!(store::list(dir).unwrap().iter().any(|(l, _)| *l == lease));

    // Two foreign files in the same dir: one device each of their own, and one both declare.
    let (own_a, own_b, both) = (
        format!("cditest-{pid}-a"),
        format!("cditest-{pid}-b"),
        format!("cditest-{pid}-both"),
    );
    written.files.push(foreign_spec(
        &format!("migrun-test-{pid}-a.json"),
        &[own_a.clone(), both.clone()],
    ));
    written.files.push(foreign_spec(
        &format!("migrun-test-{pid}-b.json"),
        &[own_b.clone(), both.clone()],
    ));

    // GI 1 / CI 0 of GPU minor 0: capability minors 12 and 13 of major 241 (hex f1:c, f1:d).
    let script = "echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE $MIGRUN_TEST_TOOLKIT; \
        for n in nvidia0 nvidia-caps/nvidia-cap12 nvidia-caps/nvidia-cap13 nvidiactl nvidia-uvm nvidia-uvm-tools; \
        do stat -c '%n %F %t:%T %a' /dev/$n; done; cat /mounted/file";
    let want = format!(
        "{uuid} {lease} yes\n\
         /dev/nvidia0 character special file c3:0 666\n\
         /dev/nvidia-caps/nvidia-cap12 character special file f1:c 444\n\
         /dev/nvidia-caps/nvidia-cap13 character special file f1:d 444\n\
         /dev/nvidiactl character special file c3:ff 666\n\
         /dev/nvidia-uvm character special file ee:0 666\n\
         /dev/nvidia-uvm-tools character special file ee:1 666\n\
         from the fake toolkit\n"
    );
    for device in [lease.to_string(), name.clone(), uuid.clone()] {
        let _ = fs::remove_file(&mark);
        let out = run_ok(
            podman
                .run_cmd()
                .args(["--device", &cdi::spec::qualified_name(&device)])
                .arg(&image)
                .args(["sh", "-c", script]),
        );
        assert_eq!(out, want, "--device migrun.io/mig={device}");
        assert!(mark.exists(), "the toolkit's hook ran for {device}");
    }

    // The foreign specs do not get in the way, and their own devices resolve next to migrun's.
    let out = run_ok(
        podman
            .run_cmd()
            .args(["--device", &cdi::spec::qualified_name(&name)])
            .args(["--device", &format!("nvidia.com/gpu={own_a}")])
            .args(["--device", &format!("nvidia.com/gpu={own_b}")])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES $FOREIGN"]),
    );
    assert_eq!(out.split_whitespace().next(), Some(uuid.as_str()), "{out}");
    assert!(out.contains("cditest-"), "{out}");
    // The name both foreign files declare is dropped: the reason migrun has a kind of its own.
    let both_out = podman
        .run_cmd()
        .args(["--device", &format!("nvidia.com/gpu={both}")])
        .arg(&image)
        .args(["true"])
        .output()
        .unwrap();
    assert!(
        !both_out.status.success(),
        "a device declared in two files of one dir must not resolve: {}",
        String::from_utf8_lossy(&both_out.stderr)
    );

    // Removing the spec takes the devices away.
    assert!(store::remove(dir, lease).unwrap());
    let gone = podman
        .run_cmd()
        .args(["--device", &cdi::spec::qualified_name(&name)])
        .arg(&image)
        .args(["true"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "no spec, no device");
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains(&name), "podman names the device: {err}");
}
