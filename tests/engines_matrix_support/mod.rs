//! The engine matrix's shared helpers and its CDI tests (tests/engines_matrix.rs generates a test per engine set
//! from each `pub fn …(set: EngineSet)` here): podman's, Docker 26's, Compose's and containerd 1.7's CRI's
//! resolution of migrun's CDI devices. Owns no engine: they come from tests/common/engines.rs.

use crate::common::engines::{
    busybox_image, busybox_oci_tar_as, run_ok, run_output, shared_dockerd_in, unique_name,
    EngineSet, Podman, PrivateContainerd, PrivateDockerd, CONTAINERD_BUSYBOX_IMAGE,
};
use crate::hooks_common::Sim;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn wait_for(set: EngineSet, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "[{}] timed out waiting for {what}",
            set.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One simulated H100 with its own state dir and config; `cdi` gives it a CDI dir of its own.
pub struct Machine {
    pub sim: Sim,
}

impl Machine {
    pub fn new() -> Machine {
        let sim = Sim::new("h100-80gb:1");
        fs::create_dir_all(sim.tmp.path().join("cdi")).unwrap();
        let config = format!("cdi_dir = \"{}\"\n", sim.tmp.path().join("cdi").display());
        fs::write(sim.tmp.path().join("config.toml"), config).unwrap();
        Machine { sim }
    }

    pub fn cdi_dir(&self) -> PathBuf {
        self.sim.tmp.path().join("cdi")
    }

    /// `migrun` on this machine, aimed at `docker`'s daemon through the set's CLI.
    pub fn migrun(&self, set: EngineSet, docker: Option<&PrivateDockerd>) -> Command {
        let mut c = self.sim.migrun();
        c.env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MIGRUN_CONFIG", self.sim.tmp.path().join("config.toml"));
        if let Some(d) = docker {
            c.env("MIGRUN_DOCKER", set.bin("docker"))
                .env("DOCKER_HOST", d.host())
                .env("DOCKER_CONFIG", d.dir().join("cli-config"));
        }
        c
    }

    pub fn ok(&self, set: EngineSet, args: &[&str]) -> String {
        run_ok(self.migrun(set, None).args(args))
    }

    /// `migrun alloc --profile 1g.10gb --name NAME --json`.
    pub fn alloc(&self, set: EngineSet, name: &str) -> Value {
        let out = self.ok(
            set,
            &["alloc", "--profile", "1g.10gb", "--name", name, "--json"],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("[{}] {e}: {out}", set.name()))
    }
}

/// What a container given lease `a` (alloc's JSON) must see: its MIG UUID, the GPU's node, the GI's and
/// the CI's capability nodes (docs/cdi.md: GPU minor 0, capability 3 + 9 * GI, the CI's right after) and
/// the control nodes, all with explicit numbers (the runtime made them; the host has none).
pub fn cdi_script_and_want(a: &Value) -> (String, String) {
    let (mig, gi, ci) = (
        a["mig_uuid"].as_str().unwrap(),
        a["gi"].as_u64().unwrap(),
        a["ci"].as_u64().unwrap(),
    );
    let (gi_cap, ci_cap) = (3 + 9 * gi, 4 + 9 * gi + ci);
    let script = format!(
        "echo $NVIDIA_VISIBLE_DEVICES; \
         for n in nvidia0 nvidia-caps/nvidia-cap{gi_cap} nvidia-caps/nvidia-cap{ci_cap} nvidiactl nvidia-uvm nvidia-uvm-tools; \
         do stat -c '%n %F %t:%T' /dev/$n; done"
    );
    let want = format!(
        "{mig}\n\
         /dev/nvidia0 character special file c3:0\n\
         /dev/nvidia-caps/nvidia-cap{gi_cap} character special file f1:{gi_cap:x}\n\
         /dev/nvidia-caps/nvidia-cap{ci_cap} character special file f1:{ci_cap:x}\n\
         /dev/nvidiactl character special file c3:ff\n\
         /dev/nvidia-uvm character special file ee:0\n\
         /dev/nvidia-uvm-tools character special file ee:1\n"
    );
    (script, want)
}

/// containerd's CRI resolves migrun's CDI device (containerd 1.7, `enable_cdi`), driven without a kubelet by
/// tests/cri_client.py (the CRI's api.proto from Debian, compiled for Python in the Debian 13 root): a pod on
/// the node's network, one container asking for `migrun.io/mig=NAME` in its `CDI_devices`. containerd 1.6's
/// CRI has no CDI at all: its default config must lack the key, and the test says so.
pub fn containerd_cri_cdi(set: EngineSet) {
    let version = set.version("containerd");
    let default = run_ok(Command::new(set.bin("containerd")).args(["config", "default"]));
    let has_cdi = default.contains("enable_cdi");
    if set == EngineSet::Bookworm {
        assert!(!has_cdi, "[{}] {version} knows enable_cdi", set.name());
        println!(
            "[{}] {version}: its CRI has no CDI (no enable_cdi in `config default`)",
            set.name()
        );
        return;
    }
    assert!(has_cdi, "[{}] {version} lacks enable_cdi", set.name());
    let m = Machine::new();
    let tmp = m.sim.tmp.path();
    const PAUSE: &str = "docker.io/migrun-test/pause:latest";
    // restrict_oom_score_adj: the pod sandbox asks for oom_score_adj -998, and lowering it needs
    // CAP_SYS_RESOURCE, which root lacks on this test machine (runc: "failed to update
    // /proc/self/oom_score_adj: Permission denied"); containerd's switch for such hosts keeps the daemon's own.
    let ctrd = PrivateContainerd::start_with_cri(
        set,
        &format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  enable_cdi = true
  restrict_oom_score_adj = true
  cdi_spec_dirs = ["{cdi}"]
  sandbox_image = "{PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{tmp}/cni/bin"
    conf_dir = "{tmp}/cni/conf"
"#,
            cdi = m.cdi_dir().display(),
            tmp = tmp.display(),
        ),
    );
    // The CRI plugin's images live in its namespace, k8s.io; the pod's sandbox image must keep running.
    for (name, cmd) in [
        (CONTAINERD_BUSYBOX_IMAGE, &["sh"][..]),
        (PAUSE, &["sleep", "3600"][..]),
    ] {
        let dir = tmp.join(format!("image-{}", name.len()));
        fs::create_dir_all(&dir).unwrap();
        let tar = busybox_oci_tar_as(&dir, name, cmd);
        run_ok(
            ctrd.ctr_cmd_in("k8s.io")
                .args(["images", "import"])
                .arg(&tar),
        );
    }
    let name = unique_name("trainer");
    let a = m.alloc(set, &name);
    let (script, want) = cdi_script_and_want(&a);
    let work = tmp.join("cri");
    fs::create_dir_all(&work).unwrap();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cri_client.py");
    let out = run_output(
        Command::new(set.bin("python3"))
            .arg(&client)
            .arg(ctrd.address())
            .arg(&work)
            .arg(CONTAINERD_BUSYBOX_IMAGE)
            .arg(format!("migrun.io/mig={name}"))
            .arg(&script),
    );
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "[{}] CRI container with migrun.io/mig={name}: {}\n{err}\n--- containerd log ---\n{}",
        set.name(),
        text(&out.stdout),
        fs::read_to_string(ctrd.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warn"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(text(&out.stdout), want, "[{}] {err}", set.name());
    m.ok(set, &["release", &name]);
    println!(
        "[{}] {version}: CRI resolved migrun.io/mig={name} ({})",
        set.name(),
        err.lines().find(|l| l.starts_with("cri:")).unwrap_or("")
    );
}

/// `migrun alloc --name` and podman's `--device migrun.io/mig=<lease>` / `=<name>`, under each runtime.
pub fn podman_cdi(set: EngineSet) {
    let m = Machine::new();
    let name = unique_name("trainer");
    let a = m.alloc(set, &name);
    let (script, want) = cdi_script_and_want(&a);
    let device = a["cdi"].as_str().unwrap().to_string();
    for rt in set.oci_runtimes() {
        let podman = Podman::new_in(set, Some(&m.cdi_dir())).runtime(*rt);
        let image = podman.busybox_image();
        for dev in [device.clone(), format!("migrun.io/mig={name}")] {
            let out = run_ok(
                podman
                    .run_cmd()
                    .args(["--device", &dev])
                    .arg(&image)
                    .args(["sh", "-c", &script]),
            );
            assert_eq!(out, want, "[{} podman + {rt}] --device {dev}", set.name());
        }
        println!("[{}] {} + {rt}: CDI ok", set.name(), set.version("podman"));
    }
    m.ok(set, &["release", &name]);
    let podman = Podman::new_in(set, Some(&m.cdi_dir()));
    let image = podman.busybox_image();
    let gone = run_output(
        podman
            .run_cmd()
            .args(["--device", &device])
            .arg(&image)
            .arg("true"),
    );
    assert!(
        !gone.status.success(),
        "[{}] released, yet the device resolves",
        set.name()
    );
}

/// What the set's dockerd says about CDI: the spec dirs `docker info` reports (`None`: it knows no CDI).
pub fn docker_cdi_dirs(docker: &PrivateDockerd) -> Option<Vec<String>> {
    let out = run_ok(docker.docker_cmd().args(["info", "--format", "{{json .}}"]));
    let info: Value = serde_json::from_str(&out).unwrap();
    info.get("CDISpecDirs").and_then(|d| d.as_array()).map(|a| {
        a.iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    })
}

/// Docker ≥ 25 with CDI on: `--inject cdi` hands the slice over as migrun's CDI device, and the launcher's
/// detection picks CDI by itself. Docker 20.10 knows no CDI: detection must not pick it, and the launcher
/// says what to do instead.
pub fn docker_cdi(set: EngineSet) {
    let m = Machine::new();
    let cdi = m.cdi_dir().display().to_string();
    let docker = match set {
        // Docker 20.10 refuses unknown daemon.json keys, so it gets none.
        EngineSet::Bookworm => PrivateDockerd::start_in(set, json!({})),
        EngineSet::Trixie => PrivateDockerd::start_in(
            set,
            json!({"features": {"cdi": true}, "cdi-spec-dirs": [cdi]}),
        ),
    };
    let image = busybox_image(&docker);
    let version = set.version("dockerd");
    let dirs = docker_cdi_dirs(&docker);
    let detect = run_output(
        m.migrun(set, Some(&docker))
            .args(["-v", "--profile", "1g.10gb", "--pull", "never", "--rm"])
            .args([&image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    match set {
        EngineSet::Bookworm => {
            assert_eq!(dirs, None, "[{}] {version} reports CDI dirs", set.name());
            assert!(
                !detect.status.success(),
                "[{}] no toolkit, no CDI",
                set.name()
            );
            let err = text(&detect.stderr);
            assert!(
                err.contains("no NVIDIA container toolkit") && err.contains("CDI"),
                "[{}] {err}",
                set.name()
            );
            println!(
                "[{}] {version}: no CDI (docker info has no CDISpecDirs); detection refuses with: {}",
                set.name(),
                err.lines().last().unwrap_or("")
            );
        }
        EngineSet::Trixie => {
            assert_eq!(dirs, Some(vec![cdi.clone()]), "[{}] {version}", set.name());
            let (out, err) = (text(&detect.stdout), text(&detect.stderr));
            assert!(
                detect.status.success() && out.trim().starts_with("MIG-"),
                "[{}] detection on {version}: {out}\n{err}",
                set.name()
            );
            assert!(
                err.contains("--inject cdi (detected") && err.contains("--device migrun.io/mig="),
                "[{}] detection chose CDI: {err}",
                set.name()
            );
            // --inject cdi, the device nodes and env inside.
            let lease_probe = "echo $NVIDIA_VISIBLE_DEVICES $MIGRUN_LEASE";
            let out = run_ok(
                m.migrun(set, Some(&docker))
                    .args(["--inject", "cdi", "--profile", "1g.10gb", "--pull", "never"])
                    .args(["--rm", &image, "sh", "-c"])
                    .arg(format!(
                        "{lease_probe}; for n in nvidia0 nvidiactl nvidia-uvm; do stat -c '%n %t:%T' /dev/$n; done; ls /dev/nvidia-caps | wc -l"
                    )),
            );
            let lines: Vec<&str> = out.lines().collect();
            assert!(
                lines.len() == 5 && lines[0].starts_with("MIG-"),
                "[{}] {out}",
                set.name()
            );
            assert_eq!(
                lines[1..],
                [
                    "/dev/nvidia0 c3:0",
                    "/dev/nvidiactl c3:ff",
                    "/dev/nvidia-uvm ee:0",
                    "2"
                ],
                "[{}] {out}",
                set.name()
            );
            // A migrun whose cdi_dir is not among docker's: detection refuses (docker could not resolve the
            // device) with a line naming both dirs, and nothing is allocated.
            let elsewhere = Machine::new();
            let refused = run_output(elsewhere.migrun(set, Some(&docker)).args([
                "--profile",
                "1g.10gb",
                "--pull",
                "never",
                "--rm",
                &image,
                "true",
            ]));
            let err = text(&refused.stderr);
            assert!(
                !refused.status.success()
                    && err.contains(&cdi)
                    && err.contains(&elsewhere.cdi_dir().display().to_string())
                    && err.contains("cdi_dir"),
                "[{}] {err}",
                set.name()
            );
            assert!(
                elsewhere.sim.settled_leases().is_empty(),
                "[{}]",
                set.name()
            );
            println!(
                "[{}] {version}: CDI (docker info CDISpecDirs {dirs:?}); detection picked it; --inject cdi ok; \
                 another cdi_dir refused: {}",
                set.name(),
                err.trim()
            );
        }
    }
    assert!(
        m.sim.settled_leases().is_empty(),
        "[{}] lease left",
        set.name()
    );
    assert!(
        fs::read_dir(m.cdi_dir()).unwrap().next().is_none(),
        "[{}] spec left",
        set.name()
    );
}

/// A Compose file naming a leased slice's CDI device (`driver: cdi`, `device_ids: [migrun.io/mig=NAME]`)
/// starts its service on it. Debian 12 has no Compose v2 plugin: the set's CLI must then say so.
pub fn compose_cdi(set: EngineSet) {
    if !set.has_compose_plugin() {
        let docker = shared_dockerd_in(set);
        let out = run_output(docker.docker_cmd().args(["compose", "version"]));
        assert!(
            !out.status.success(),
            "[{}] has a compose plugin after all: {}",
            set.name(),
            text(&out.stdout)
        );
        println!(
            "[{}] no Compose v2 plugin in this Debian: `docker compose` fails here, as it must",
            set.name()
        );
        return;
    }
    let m = Machine::new();
    let cdi = m.cdi_dir().display().to_string();
    let docker = PrivateDockerd::start_in(
        set,
        json!({"features": {"cdi": true}, "cdi-spec-dirs": [cdi]}),
    );
    let image = busybox_image(&docker);
    let name = unique_name("trainer");
    let a = m.alloc(set, &name);
    let (script, want) = cdi_script_and_want(&a);
    let dir = m.sim.tmp.path().join("compose");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    // JSON is YAML: written with serde, no hand-quoting of the script.
    let compose = json!({"services": {"trainer": {
        "image": image, "pull_policy": "never", "network_mode": "none",
        // `$$`: Compose would interpolate `$NAME` itself.
        "command": ["sh", "-c", script.replace('$', "$$")],
        "deploy": {"resources": {"reservations": {"devices": [
            {"driver": "cdi", "capabilities": ["gpu"], "device_ids": [format!("migrun.io/mig={name}")]}
        ]}}}
    }}});
    fs::write(&file, serde_json::to_vec_pretty(&compose).unwrap()).unwrap();
    let project = unique_name("matrix");
    let compose_cmd = |args: &[&str]| {
        let mut c = docker.docker_cmd();
        c.args(["compose", "--ansi", "never", "-f"])
            .arg(&file)
            .args(["-p", &project])
            .args(args);
        c
    };
    run_ok(&mut compose_cmd(&[
        "up",
        "--abort-on-container-exit",
        "--no-color",
    ]));
    // The service's output through docker itself: compose 2.26's `logs` marks every line with an
    // erase-line escape even with --ansi never.
    let id = run_ok(&mut compose_cmd(&["ps", "--all", "--quiet", "trainer"]));
    let logs = run_ok(docker.docker_cmd().args(["logs", id.trim()]));
    run_ok(&mut compose_cmd(&["down"]));
    assert_eq!(
        logs,
        want,
        "[{}] the service's view of its slice",
        set.name()
    );
    m.ok(set, &["release", &name]);
    println!(
        "[{}] {}: a Compose service got migrun.io/mig={name}",
        set.name(),
        text(&run_output(docker.docker_cmd().args(["compose", "version"])).stdout).trim()
    );
}
