//! The engine matrix: one set of engine tests, run against each engine set (tests/common/engine_set.rs, `common::engines::EngineSet`):
//! the host's Debian 12 engines (dockerd 20.10, containerd 1.6, podman 4.3, runc) and Debian 13's from the
//! root scripts/trixie-root.sh builds (dockerd 26, containerd 1.7, podman 5, runc and crun). The `matrix!`
//! macro generates `bookworm::*` and `trixie::*` from the same functions, so the two never drift apart;
//! every failure names its set, and where the generations differ (CDI in Docker, the Compose plugin) the
//! test checks what the set's engine reports against what its version must do and prints what it saw.
//! Needs root, the host's engines and the Debian 13 root (scripts/setup-test-host.sh); fails otherwise.

mod common;
mod hooks_common;

use common::engines::{
    busybox_image, busybox_oci_tar_as, run_ok, run_output, shared_containerd_in, shared_dockerd_in,
    unique_name, EngineSet, Podman, PrivateContainerd, PrivateDockerd, CONTAINERD_BUSYBOX_IMAGE,
};
use hooks_common::{migrun_bin, Sim};
use migrun::engine::docker::{option_kind, short_option, OptionKind};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

macro_rules! matrix {
    ($($set:ident => $module:ident),* $(,)?) => {$(
        mod $module {
            use super::*;
            const SET: EngineSet = EngineSet::$set;
            #[test]
            fn launcher_on_docker() { super::launcher_on_docker(SET) }
            #[test]
            fn shim_under_dockerd() { super::shim_under_dockerd(SET) }
            #[test]
            fn shim_under_containerd_ctr() { super::shim_under_containerd_ctr(SET) }
            #[test]
            fn containerd_cri_cdi() { super::containerd_cri_cdi(SET) }
            #[test]
            fn podman_hooks_d() { super::podman_hooks_d(SET) }
            #[test]
            fn podman_cdi() { super::podman_cdi(SET) }
            #[test]
            fn docker_cdi() { super::docker_cdi(SET) }
            #[test]
            fn compose_cdi() { super::compose_cdi(SET) }
            #[test]
            fn docker_option_table() { super::docker_option_table(SET) }
        }
    )*};
}

matrix!(Bookworm => bookworm, Trixie => trixie);

/// A machine without the Debian 13 root: the script's `path` and `run` fail with a one-line error naming
/// the fix (which is what makes every trixie test fail, never skip, there).
#[test]
fn a_missing_debian_13_root_is_an_error_naming_the_fix() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/trixie-root.sh");
    let empty = tempfile::tempdir().unwrap();
    for args in [&["path"][..], &["run", "--", "true"]] {
        let out = run_output(
            Command::new("bash")
                .arg(&script)
                .args(args)
                .env("CACHE", empty.path()),
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.lines().count() == 1
                && err.contains("Debian 13 root")
                && err.contains("missing")
                && err.contains("run scripts/setup-test-host.sh as root"),
            "{args:?}: {err}"
        );
    }
}

fn wait_for(set: EngineSet, what: &str, mut f: impl FnMut() -> bool) {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One simulated H100 with its own state dir and config; `cdi` gives it a CDI dir of its own.
struct Machine {
    sim: Sim,
}

impl Machine {
    fn new() -> Machine {
        let sim = Sim::new("h100-80gb:1");
        fs::create_dir_all(sim.tmp.path().join("cdi")).unwrap();
        let config = format!("cdi_dir = \"{}\"\n", sim.tmp.path().join("cdi").display());
        fs::write(sim.tmp.path().join("config.toml"), config).unwrap();
        Machine { sim }
    }

    fn cdi_dir(&self) -> PathBuf {
        self.sim.tmp.path().join("cdi")
    }

    /// `migrun` on this machine, aimed at `docker`'s daemon through the set's CLI.
    fn migrun(&self, set: EngineSet, docker: Option<&PrivateDockerd>) -> Command {
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

    fn ok(&self, set: EngineSet, args: &[&str]) -> String {
        run_ok(self.migrun(set, None).args(args))
    }

    /// `migrun alloc --profile 1g.10gb --name NAME --json`.
    fn alloc(&self, set: EngineSet, name: &str) -> Value {
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
fn cdi_script_and_want(a: &Value) -> (String, String) {
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

/// `migrun --profile 1g.10gb --inject env IMAGE …` on the set's dockerd: the container sees its slice and
/// the slice is back when the launcher returns.
fn launcher_on_docker(set: EngineSet) {
    let docker = shared_dockerd_in(set);
    let image = busybox_image(docker);
    println!("[{}] launcher on {}", set.name(), set.version("dockerd"));
    let m = Machine::new();
    let out = run_ok(
        m.migrun(set, Some(docker))
            .args(["--profile", "1g.10gb", "--inject", "env", "--pull", "never"])
            .args(["--rm", &image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(out.trim().starts_with("MIG-"), "[{}] {out:?}", set.name());
    assert!(m.sim.leases().is_empty(), "[{}] lease left", set.name());
    assert!(
        m.sim.instances().is_empty(),
        "[{}] instance left",
        set.name()
    );
}

/// The packaged daemon.json runtime entry, pointed at this test's shim.
fn shim_daemon_config(shim: &Path) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/docker/daemon.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    v["runtimes"]["migrun"]["path"] = Value::String(shim.display().to_string());
    v
}

/// dockerd with `migrun-runtime` registered: `docker run --runtime migrun -e MIGRUN_PROFILE=…` sees its
/// slice, which is released when the container is gone.
fn shim_under_dockerd(set: EngineSet) {
    let sim = Sim::new("h100-80gb:1");
    let docker = PrivateDockerd::start_in(set, shim_daemon_config(&sim.shim()));
    let image = busybox_image(&docker);
    let out = run_ok(
        docker
            .run_cmd()
            .args(["--runtime", "migrun", "-e", "MIGRUN_PROFILE=1g.10gb"])
            .arg(&image)
            .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
    );
    assert!(
        out.trim().starts_with("MIG-"),
        "[{}] {out:?}\nlog:\n{}",
        set.name(),
        sim.log()
    );
    wait_for(set, "the --rm release", || sim.leases().is_empty());
    assert!(sim.instances().is_empty(), "[{}]", set.name());
    println!("[{}] shim under {}: ok", set.name(), set.version("dockerd"));
}

/// containerd's runc v2 shim with migrun-runtime as its runc binary (`ctr run --runc-binary`).
fn shim_under_containerd_ctr(set: EngineSet) {
    let sim = Sim::new("h100-80gb:1");
    let ctrd = shared_containerd_in(set);
    let id = unique_name("matrix-ctr");
    let out = run_ok(&mut ctrd.run_cmd(
        &id,
        Some(&sim.shim()),
        &["--env", "MIGRUN_PROFILE=1g.10gb"],
        &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"],
    ));
    assert!(
        out.trim().starts_with("MIG-"),
        "[{}] {out:?}\nlog:\n{}",
        set.name(),
        sim.log()
    );
    wait_for(set, "the release after exit", || sim.leases().is_empty());
    assert!(sim.instances().is_empty(), "[{}]", set.name());
    assert!(
        sim.log().contains("engine=\"containerd\""),
        "[{}] {}",
        set.name(),
        sim.log()
    );
    println!(
        "[{}] shim under {} via ctr: ok",
        set.name(),
        set.version("containerd")
    );
}

/// containerd's CRI resolves migrun's CDI device (containerd 1.7, `enable_cdi`), driven without a kubelet by
/// tests/cri_client.py (the CRI's api.proto from Debian, compiled for Python in the Debian 13 root): a pod on
/// the node's network, one container asking for `migrun.io/mig=NAME` in its `CDI_devices`. containerd 1.6's
/// CRI has no CDI at all: its default config must lack the key, and the test says so.
fn containerd_cri_cdi(set: EngineSet) {
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

/// The repo's hooks.d files, pointed at the binary under test with the simulator's env.
fn hooks_dir(sim: &Sim) -> PathBuf {
    let dir = sim.tmp.path().join("hooks.d");
    fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        v["hook"]["path"] = Value::String(migrun_bin().display().to_string());
        v["hook"]["env"] = json!(sim.env_strings());
        fs::write(
            dir.join(p.file_name().unwrap()),
            serde_json::to_vec(&v).unwrap(),
        )
        .unwrap();
    }
    dir
}

/// podman with the repo's hooks.d files, under each OCI runtime the set has (runc; runc and crun on
/// podman 5): an annotated container sees its slice and gives it back.
fn podman_hooks_d(set: EngineSet) {
    for rt in set.oci_runtimes() {
        let sim = Sim::new("h100-80gb:1");
        let podman = Podman::new_in(set, None)
            .hooks_dir(hooks_dir(&sim))
            .runtime(*rt);
        let image = podman.busybox_image();
        let out = run_ok(
            podman
                .run_cmd()
                .args(["--annotation", "migrun.profile=1g.10gb"])
                .arg(&image)
                .args(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"]),
        );
        assert!(
            out.trim().starts_with("MIG-"),
            "[{} podman + {rt}] {out:?}\nlog:\n{}",
            set.name(),
            sim.log()
        );
        wait_for(set, "the release after exit", || sim.leases().is_empty());
        assert!(sim.instances().is_empty(), "[{} podman + {rt}]", set.name());
        println!(
            "[{}] {} + {rt}: hooks.d ok",
            set.name(),
            set.version("podman")
        );
    }
}

/// `migrun alloc --name` and podman's `--device migrun.io/mig=<lease>` / `=<name>`, under each runtime.
fn podman_cdi(set: EngineSet) {
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
fn docker_cdi_dirs(docker: &PrivateDockerd) -> Option<Vec<String>> {
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
fn docker_cdi(set: EngineSet) {
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
            println!(
                "[{}] {version}: CDI (docker info CDISpecDirs {dirs:?}); detection picked it; --inject cdi ok",
                set.name()
            );
        }
    }
    assert!(m.sim.leases().is_empty(), "[{}] lease left", set.name());
    assert!(
        fs::read_dir(m.cdi_dir()).unwrap().next().is_none(),
        "[{}] spec left",
        set.name()
    );
}

/// A Compose file naming a leased slice's CDI device (`driver: cdi`, `device_ids: [migrun.io/mig=NAME]`)
/// starts its service on it. Debian 12 has no Compose v2 plugin: the set's CLI must then say so.
fn compose_cdi(set: EngineSet) {
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
            "[{}] no Compose v2 plugin in this Debian: not tested",
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

/// Every option of the set's `docker run --help` is in migrun's table, with the same kind (a value or a
/// switch) and short form. An option the CLI knows and the table does not is a failure naming it.
fn docker_option_table(set: EngineSet) {
    let cli = set.bin("docker");
    let out = run_ok(Command::new(&cli).args(["run", "--help"]));
    let version = text(&run_output(Command::new(&cli).arg("--version")).stdout);
    let parsed = parse_run_help(&out);
    // The parser itself: a value with its short form, a switch with one, a switch without.
    for want in [
        (Some('e'), "env".to_string(), true),
        (Some('d'), "detach".to_string(), false),
        (None, "rm".to_string(), false),
        (None, "device".to_string(), true),
    ] {
        assert!(
            parsed.contains(&want),
            "[{}] {want:?} not read from:\n{out}",
            set.name()
        );
    }
    let mut problems = Vec::new();
    let mut n = 0;
    for (short, long, takes_value) in parsed {
        n += 1;
        let want = if takes_value {
            OptionKind::Value
        } else {
            OptionKind::Switch
        };
        match option_kind(&long) {
            None => problems.push(format!("--{long} ({want:?}) is not in migrun's table")),
            Some(k) if k != want => problems.push(format!(
                "--{long} is a {want:?} for docker, a {k:?} in migrun's table"
            )),
            Some(_) => {}
        }
        if let Some(c) = short {
            if short_option(c) != Some(long.as_str()) {
                problems.push(format!(
                    "-{c} is --{long} for docker, {:?} in migrun's table",
                    short_option(c)
                ));
            }
        }
    }
    assert!(
        n > 80,
        "[{}] parsed only {n} options of:\n{out}",
        set.name()
    );
    assert!(
        problems.is_empty(),
        "[{}] {}: migrun's docker option table (src/engine/docker/options.rs) lacks what `docker run --help` lists:\n{}",
        set.name(),
        version.trim(),
        problems.join("\n")
    );
    println!(
        "[{}] {}: all {n} `docker run` options known",
        set.name(),
        version.trim()
    );
}

/// `(short, long, takes a value)` for each option line of pflag's help: `  -e, --env list   Set…` or
/// `      --rm   Automatically…` (a value's type follows the name after one space; the description after
/// two or more).
fn parse_run_help(help: &str) -> Vec<(Option<char>, String, bool)> {
    let mut opts = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let (short, rest) = match t.strip_prefix('-') {
            Some(r) if !r.starts_with('-') && r.chars().nth(1) == Some(',') => {
                (r.chars().next(), r[2..].trim_start())
            }
            _ => (None, t),
        };
        let Some(rest) = rest.strip_prefix("--") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let after = &rest[name.len()..];
        let takes_value = after.starts_with(' ') && !after.starts_with("  ") && after.len() > 1;
        opts.push((short, name, takes_value));
    }
    opts
}
