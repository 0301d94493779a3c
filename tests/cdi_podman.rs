//! podman resolves migrun's CDI devices: a spec written by migrun into /var/run/cdi for a fake slice (host facts from the H200 capture, the toolkit's edits from a fake toolkit spec) gives the container the MIG UUID, the capability nodes and the toolkit's mount, by lease id, name and MIG UUID, next to foreign `nvidia.com/gpu` specs; and `migrun alloc --name` (simulator, and NVML on the fake library) gives podman its slice by lease id and by name until release or gc. Needs root, podman, unshare and nsenter; fails otherwise.
//!
//! podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi (no flag for another dir), so the
//! test writes into /var/run/cdi under names unique to this process and removes them on drop.

mod common;

use common::engines::{require, run_ok, Podman};
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

/// A private mount namespace in which `/run/cdi` (so `/var/run/cdi`) is a tmpfs of its own, held by
/// a `sleep` in it; commands enter it with `nsenter`. podman 4.3 reads only /etc/cdi and
/// /var/run/cdi, and this test's gc must neither see nor remove specs other tests write there.
struct PrivateRunCdi {
    holder: std::process::Child,
    /// A file that keeps the host's /run/cdi (the mount point) from being removed by another test
    /// while the namespace uses it.
    keep: PathBuf,
    created: bool,
}

impl PrivateRunCdi {
    fn new() -> PrivateRunCdi {
        use std::io::BufRead;
        let host = Path::new("/run/cdi");
        let created = !host.exists();
        fs::create_dir_all(host).unwrap();
        let keep = host.join(format!(".migrun-test-{}.keep", std::process::id()));
        fs::write(&keep, "").unwrap();
        let mut holder = std::process::Command::new(require("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 migrun-cdi /run/cdi && echo ready && exec sleep 600")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the namespace's tmpfs is mounted");
        PrivateRunCdi {
            holder,
            keep,
            created,
        }
    }

    /// `cmd`, run inside the namespace (same program, arguments and environment).
    fn cmd(&self, cmd: &std::process::Command) -> std::process::Command {
        let mut c = std::process::Command::new(require("nsenter"));
        c.args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// What the namespace's /run/cdi holds.
    fn files(&self) -> Vec<String> {
        let out = run_ok(&mut self.cmd(std::process::Command::new("ls").args(["-A", "/run/cdi"])));
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for PrivateRunCdi {
    fn drop(&mut self) {
        // The namespace (and its tmpfs) ends with its last process, this sleep.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = fs::remove_file(&self.keep);
        if self.created {
            let _ = fs::remove_dir("/run/cdi");
        }
    }
}

/// `migrun` on one machine, inside the namespace, writing specs to its /run/cdi.
struct Migrun<'a> {
    ns: &'a PrivateRunCdi,
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Migrun<'_> {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_migrun"));
        c.args(args).env_remove("MIGRUN_SIMULATE");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.ns.cmd(&c)
    }
    fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd(args))
    }
}

fn machine<'a>(ns: &'a PrivateRunCdi, nvml: Option<&common::fake_nvml::FakeNvml>) -> Migrun<'a> {
    machine_of(ns, nvml, "h100-80gb")
}

/// [`machine`] for a simulated model of the caller's choice (the fake NVML brings its own).
fn machine_of<'a>(
    ns: &'a PrivateRunCdi,
    nvml: Option<&common::fake_nvml::FakeNvml>,
    spec: &str,
) -> Migrun<'a> {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    fs::write(&config, "cdi_dir = \"/run/cdi\"\n").unwrap();
    let mut env = vec![
        ("MIGRUN_CONFIG".to_string(), config.display().to_string()),
        (
            "MIGRUN_STATE_DIR".to_string(),
            tmp.path().join("state").display().to_string(),
        ),
    ];
    match nvml {
        Some(f) => env.extend(f.env()),
        None => env.push(("MIGRUN_SIMULATE".to_string(), spec.to_string())),
    }
    Migrun { ns, env, _tmp: tmp }
}

#[test]
fn podman_gets_the_slice_of_a_migrun_alloc_by_lease_id_and_name_until_release_or_gc() {
    let podman = Podman::new();
    let image = podman.busybox_image();
    let ns = PrivateRunCdi::new();
    let fake = common::fake_nvml::FakeNvml::new("h100-80gb");
    for nvml in [None, Some(&fake)] {
        let m = machine(&ns, nvml);
        let a: serde_json::Value = serde_json::from_str(&m.ok(&[
            "alloc",
            "--profile",
            "1g.10gb",
            "--name",
            "trainer",
            "--json",
        ]))
        .unwrap();
        let lease = a["lease"].as_u64().unwrap();
        let (mig, gi, ci) = (
            a["mig_uuid"].as_str().unwrap(),
            a["gi"].as_u64().unwrap(),
            a["ci"].as_u64().unwrap(),
        );
        let device = a["cdi"].as_str().unwrap().to_string();
        assert_eq!(device, format!("migrun.io/mig={lease}"));
        assert_eq!(ns.files(), [format!("migrun-mig-{lease}.json")]);

        // GPU 0 (device minor 0): GI capability 3 + 9 * GI, the CI's right after (docs/cdi.md).
        let (gi_cap, ci_cap) = (3 + 9 * gi, 4 + 9 * gi + ci);
        let script = format!(
            "echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE; \
             for n in nvidia0 nvidia-caps/nvidia-cap{gi_cap} nvidia-caps/nvidia-cap{ci_cap} nvidiactl nvidia-uvm nvidia-uvm-tools; \
             do stat -c '%n %F %t:%T %a' /dev/$n; done"
        );
        let want = format!(
            "{mig} {lease}\n\
             /dev/nvidia0 character special file c3:0 666\n\
             /dev/nvidia-caps/nvidia-cap{gi_cap} character special file f1:{gi_cap:x} 444\n\
             /dev/nvidia-caps/nvidia-cap{ci_cap} character special file f1:{ci_cap:x} 444\n\
             /dev/nvidiactl character special file c3:ff 666\n\
             /dev/nvidia-uvm character special file ee:0 666\n\
             /dev/nvidia-uvm-tools character special file ee:1 666\n"
        );
        let mut run = podman.run_cmd();
        run.args(["--device", &device])
            .arg(&image)
            .args(["sh", "-c", &script]);
        assert_eq!(run_ok(&mut ns.cmd(&run)), want, "nvml: {}", nvml.is_some());
        // The same device by the lease's name.
        assert_eq!(a["name"], "trainer");
        let mut by_name = podman.run_cmd();
        by_name
            .args(["--device", "migrun.io/mig=trainer"])
            .arg(&image)
            .args(["sh", "-c", &script]);
        assert_eq!(run_ok(&mut ns.cmd(&by_name)), want, "by name");

        // release (by name) takes the device away.
        m.ok(&["release", "trainer"]);
        assert!(ns.files().is_empty());
        let mut gone = podman.run_cmd();
        gone.args(["--device", &device]).arg(&image).arg("true");
        let out = ns.cmd(&gone).output().unwrap();
        assert!(!out.status.success(), "no spec, no device");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&device));

        // A lease whose holder was killed keeps its spec until gc.
        let mut holder = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let line = m.ok(&[
            "alloc",
            "--profile",
            "1g.10gb",
            "--holder-pid",
            &holder.id().to_string(),
        ]);
        let lease: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        let device = cdi::spec::qualified_name(&lease.to_string());
        let mut still = podman.run_cmd();
        still.args(["--device", &device]).arg(&image).arg("true");
        run_ok(&mut ns.cmd(&still));
        let out = m.ok(&["gc"]);
        assert!(
            out.contains(&format!("removed the CDI spec of lease {lease}")),
            "{out}"
        );
        assert!(ns.files().is_empty());
        let out = ns.cmd(&still).output().unwrap();
        assert!(!out.status.success(), "gc took the device away");
    }
}

/// Compute-instance slices (issue 22): two `1c.3g.40gb` leases share one GPU instance, and podman gives each
/// container its own compute instance: its own MIG UUID and its own CI capability node (not ci0's), beside
/// the GPU instance's shared one. On the simulator and through NVML on the fake library (A100 80GB, whose
/// compute-instance rows the tables know).
#[test]
fn podman_gives_two_containers_different_compute_instances_of_one_gpu_instance() {
    let podman = Podman::new();
    let image = podman.busybox_image();
    let ns = PrivateRunCdi::new();
    let fake = common::fake_nvml::FakeNvml::new("a100-80gb");
    for nvml in [None, Some(&fake)] {
        let m = machine_of(&ns, nvml, "a100-80gb");
        let alloc = || -> serde_json::Value {
            serde_json::from_str(&m.ok(&["alloc", "--profile", "1c.3g.40gb", "--json"])).unwrap()
        };
        let (a, b) = (alloc(), alloc());
        assert_eq!(a["gi"], b["gi"], "one GPU instance: {a} {b}");
        assert_ne!(a["ci"], b["ci"]);
        assert_ne!(a["mig_uuid"], b["mig_uuid"]);
        let mut seen = Vec::new();
        for l in [&a, &b] {
            let (gi, ci) = (l["gi"].as_u64().unwrap(), l["ci"].as_u64().unwrap());
            // GPU 0: GI capability 3 + 9 * GI, its CIs' right after (docs/cdi.md).
            let (gi_cap, ci_cap) = (3 + 9 * gi, 4 + 9 * gi + ci);
            let script = "echo $NVIDIA_VISIBLE_DEVICES; ls /dev/nvidia-caps | sort | tr '\\n' ' '";
            let mut run = podman.run_cmd();
            run.args(["--device", l["cdi"].as_str().unwrap()])
                .arg(&image)
                .args(["sh", "-c", script]);
            let out = run_ok(&mut ns.cmd(&run));
            let mut want = [format!("nvidia-cap{gi_cap}"), format!("nvidia-cap{ci_cap}")];
            want.sort();
            assert_eq!(
                out.trim_end(),
                format!(
                    "{}\n{} {}",
                    l["mig_uuid"].as_str().unwrap(),
                    want[0],
                    want[1]
                ),
                "nvml: {}",
                nvml.is_some()
            );
            seen.push(out);
        }
        assert_ne!(
            seen[0], seen[1],
            "each container has its own compute instance"
        );
        for l in [&a, &b] {
            m.ok(&["release", &l["lease"].to_string()]);
        }
        assert!(ns.files().is_empty());
        let status: serde_json::Value = serde_json::from_str(&m.ok(&["status", "--json"])).unwrap();
        assert_eq!(status["gpus"][0]["instances"], json!([]), "nothing left");
    }
}
