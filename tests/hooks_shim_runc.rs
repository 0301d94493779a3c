//! The runtime shim in front of real runc: a create that runc fails before any hook runs (a relative
//! `process.cwd`, a duplicate container id) leaves no lease and no instance; `run ID --bundle B` gets its
//! slice from B's config, as runc reads it; a spawner's `alloc --handover` lease goes to the container whose env
//! carries its token, once; and the shim's reading of runc's arguments agrees with runc
//! 1.1's own on every form in its table. Needs root, runc and busybox-static (scripts/setup-test-host.sh).

mod common;
mod hooks_common;

use common::engines::{run_ok, unique_name, Runc};
use hooks_common::shim_runc::ShimRunc;
use migrun::engine::runtime::parse_invocation;
use serde_json::json;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The shim on an H100 with one GPU, migrun's config naming only the next runtime.
fn shim() -> ShimRunc {
    ShimRunc::with("h100-80gb:1", "")
}

fn asking(s: &mut serde_json::Value) {
    s["annotations"] = json!({"migrun.profile": "1g.10gb"});
}

#[test]
fn a_create_runc_fails_before_any_hook_leaves_no_lease() {
    let s = shim();
    let b = s.bundle("relcwd", &["true"], |c| {
        asking(c);
        c["process"]["cwd"] = json!("relative/dir");
    });
    let id = unique_name("shim-relcwd");
    let (code, err) = s.run(&["create", "--bundle", b.to_str().unwrap(), &id], &b);
    assert_eq!(code, Some(1), "runc's own exit code; {err}");
    assert!(err.contains("absolute"), "runc says why: {err}");
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty(), "the instance is destroyed");
    assert!(
        s.sim.log().contains("giving lease 1 back"),
        "{}",
        s.sim.log()
    );
}

#[test]
fn a_duplicate_container_id_gets_nothing_and_takes_nothing_from_the_first() {
    let s = shim();
    // A container without a slice holds the id: runc refuses the second create before any hook.
    let plain = s.bundle("plain", &["sleep", "600"], |_| {});
    let taken = unique_name("shim-dup-plain");
    let out = s
        .runc
        .cmd()
        .args(["create", "--bundle", plain.to_str().unwrap(), &taken])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    let asking_b = s.bundle("asking", &["true"], asking);
    let (code, err) = s.run(
        &["create", "--bundle", asking_b.to_str().unwrap(), &taken],
        &asking_b,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists"), "{err}");
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty(), "the instance is destroyed");

    // A container with a slice holds the id.
    let first = s.bundle("first", &["sleep", "600"], asking);
    let id = unique_name("shim-dup");
    let (code, err) = s.run(
        &["create", "--bundle", first.to_str().unwrap(), &id],
        &first,
    );
    assert_eq!(code, Some(0), "{err}\nlog:\n{}", s.sim.log());
    let leases = s.sim.leases();
    assert_eq!(leases.len(), 1);
    assert!(
        matches!(
            &leases[0].holder,
            migrun::lease::Holder::Container { pid: Some(_), .. }
        ),
        "prestart recorded the init pid: {:?}",
        leases[0].holder
    );
    // Same id, another bundle: a lease of its own, given back when runc refuses.
    let (code, err) = s.run(
        &["create", "--bundle", asking_b.to_str().unwrap(), &id],
        &asking_b,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        s.sim.settled_leases(),
        leases,
        "only the first container's lease"
    );
    assert_eq!(s.sim.instances().len(), 1);
    // Same id and the same bundle again: the lease is the first container's, and it keeps it.
    let (code, err) = s.run(
        &["create", "--bundle", first.to_str().unwrap(), &id],
        &first,
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        s.sim.leases(),
        leases,
        "the running container keeps its slice"
    );

    // The first container's own end releases it (poststop at delete).
    for c in [&id, &taken] {
        s.force_delete(c);
    }
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty());
}

#[test]
fn run_with_the_bundle_after_the_id_gets_the_slice_from_that_bundle() {
    let s = shim();
    let b = s.bundle(
        "asking",
        &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES > /seen"],
        |c| {
            asking(c);
            c["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("NVIDIA_VISIBLE_DEVICES=all"));
        },
    );
    // The shim's current directory holds a bundle that asks for nothing; runc reads B.
    let cwd = s.bundle("plain", &["true"], |_| {});
    let id = unique_name("shim-run");
    let (code, err) = s.run(&["run", &id, "--bundle", b.to_str().unwrap()], &cwd);
    assert_eq!(code, Some(0), "{err}\nlog:\n{}", s.sim.log());
    let seen = fs::read_to_string(b.join("rootfs/seen")).unwrap();
    assert!(
        seen.trim().starts_with("MIG-"),
        "the container saw {seen:?}"
    );
    assert!(s.sim.log().contains(seen.trim()), "{}", s.sim.log());
    // runc deleted the container after it exited: poststop gave the slice back.
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty());
}

/// runc's verdict on an argument list, run against a bundle path that does not exist: the bundle it
/// would read (`chdir B` in its error), or `None` when it rejected the arguments.
fn runc_reads(runc: &Runc, args: &[&str], cwd: &Path) -> Option<String> {
    let out = Command::new(runc.bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(rest) = err.split("chdir ").nth(1) {
        return Some(rest.split(':').next().unwrap().to_string());
    }
    assert!(
        err.contains("Incorrect Usage") || err.contains("flag") || err.contains("argument"),
        "{args:?}: unexpected runc answer {err:?}"
    );
    None
}

#[test]
fn the_shim_reads_runcs_arguments_as_runc_does() {
    let runc = Runc::new();
    let root = runc.root();
    let root = root.to_str().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let forms: &[&str] = &[
        "create ID --bundle /nb",
        "create --bundle /nb ID",
        "create ID -b /nb",
        "create ID --bundle=/nb",
        "create -b=/nb ID",
        "create -bundle /nb ID",
        "create --no-pivot ID --bundle /nb",
        "create ID --no-pivot --bundle /nb",
        "create --pid-file /tmp/p ID --bundle /nb",
        "create ID --pid-file - -b /nb",
        "create ID -- --bundle /nb",
        "create -b /nb -- ID",
        "create --bundle /x ID --bundle /nb",
        "create -b /x --bundle /nb ID",
        "create ID X --bundle /nb",
        "create ID --preserve-fds 0 -b /nb",
        "create ID --preserve-fds x -b /nb",
        "create ID --no-pivot=true -b /nb",
        "create --no-new-keyring ID -b=/nb",
        "create ID --zz -b /nb",
        "create ID -d -b /nb",
        "create ID -b",
        "run ID --bundle /nb",
        "run ID -d -b /nb",
        "run --detach ID -b /nb",
        "run -d -b /nb ID",
        "run ID --keep --no-subreaper -b /nb",
        "--debug=false create -b /nb ID",
        "--systemd-cgroup create ID -b /nb",
        "--log /dev/null --log-format text create ID -b /nb",
        "-- create -b /nb ID",
    ];
    for form in forms {
        let mut args: Vec<&str> = vec!["--root", root];
        args.extend(form.split_whitespace());
        let theirs = runc_reads(&runc, &args, cwd.path());
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let ours = parse_invocation(&argv);
        match theirs {
            Some(bundle) => {
                assert_eq!(ours.unreadable, None, "{form}: runc takes it");
                assert_eq!(ours.bundle_dir(), PathBuf::from(&bundle), "{form}");
                assert_eq!(ours.id.as_deref(), Some("ID"), "{form}");
            }
            None => assert!(
                ours.unreadable.is_some(),
                "{form}: runc refuses it, so does the shim"
            ),
        }
    }
}

/// A spawner's `migrun alloc --handover` lease, named with its token in a container's env (as docker
/// passes it): the shim hands it to that container once, charged uid kept; a wrong token or a second
/// container gets nothing; the spawner's death no longer frees it, the container's end does.
#[test]
fn a_spawners_handover_lease_goes_to_the_container_with_its_token_once() {
    let s = shim();
    let mut hub = Command::new("sleep").arg("600").spawn().unwrap();
    let out = s
        .sim
        .migrun()
        .args([
            "alloc",
            "--profile",
            "1g.10gb",
            "--for-uid",
            "2001",
            "--handover",
            "--json",
        ])
        .args(["--holder-pid", &hub.id().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env: Vec<String> = doc["handover"]["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let uuid = doc["mig_uuid"].as_str().unwrap().to_string();
    let with_env = |name: &str, env: Vec<String>| {
        s.bundle(name, &["sh", "-c", "env > /seen; sleep 600"], |c| {
            let e = c["process"]["env"].as_array_mut().unwrap();
            e.extend(env.into_iter().map(serde_json::Value::from));
        })
    };
    let held_by_hub = s.sim.leases();

    let forged: Vec<String> = env
        .iter()
        .map(|e| match e.split_once('=') {
            Some(("MIGRUN_HANDOVER", _)) => format!("MIGRUN_HANDOVER={:032x}", 7),
            _ => e.clone(),
        })
        .collect();
    let b = with_env("forged", forged);
    let (code, err) = s.run(
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            &unique_name("shim-ho-forged"),
        ],
        &b,
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("hand-over token is not the one migrun recorded"),
        "{err}"
    );
    assert_eq!(s.sim.leases(), held_by_hub, "nothing changed");

    let b = with_env("server", env.clone());
    let id = unique_name("shim-ho");
    let (code, err) = s.run(&["create", "--bundle", b.to_str().unwrap(), &id], &b);
    assert_eq!(code, Some(0), "{err}\nlog:\n{}", s.sim.log());
    let out = s.runc.cmd().args(["start", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = s.sim.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].uid, 2001, "still charged to the user");
    assert!(
        matches!(&leases[0].holder, migrun::lease::Holder::Container { id: c, pid: Some(_), .. } if *c == id),
        "{:?}",
        leases[0].holder
    );
    let seen = (0..50)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            fs::read_to_string(b.join("rootfs/seen"))
                .ok()
                .filter(|s| !s.is_empty())
        })
        .expect("the container wrote its env");
    assert!(
        seen.contains(&format!("NVIDIA_VISIBLE_DEVICES={uuid}")),
        "{seen}"
    );
    assert!(
        !seen.contains("MIGRUN_HANDOVER"),
        "the token never reaches the workload: {seen}"
    );

    // The token is used up: a second container bringing it is refused.
    let b2 = with_env("second", env);
    let (code, err) = s.run(
        &[
            "create",
            "--bundle",
            b2.to_str().unwrap(),
            &unique_name("shim-ho-2"),
        ],
        &b2,
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&format!("is held by container {id}")), "{err}");

    // The spawner's end no longer matters; the container's does.
    hub.kill().unwrap();
    hub.wait().unwrap();
    run_ok(s.sim.migrun().arg("gc"));
    assert_eq!(s.sim.leases().len(), 1, "the container still holds it");
    s.force_delete(&id);
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(s.sim.instances().is_empty());
}

/// Compute-instance slices (issue 22) through the shim: two containers asking with `MIGRUN_PROFILE=1c.3g.40gb`
/// get two compute instances of one GPU instance, each seeing its own MIG UUID; deleting both leaves nothing.
#[test]
fn two_containers_asking_for_a_compute_instance_through_the_shim_share_one_gpu_instance() {
    let s = ShimRunc::with("a100-80gb:1", "");
    let mut made = Vec::new();
    for n in 0..2 {
        let b = s.bundle(
            &format!("ci{n}"),
            &["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES > /seen"],
            |c| {
                c["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("MIGRUN_PROFILE=1c.3g.40gb"));
            },
        );
        let id = unique_name("shim-ci");
        let (code, err) = s.run(&["create", "--bundle", b.to_str().unwrap(), &id], &b);
        assert_eq!(code, Some(0), "{err}\nlog:\n{}", s.sim.log());
        made.push((id, b));
    }
    let leases = s.sim.leases();
    assert_eq!(leases.len(), 2, "log:\n{}", s.sim.log());
    assert_eq!(leases[0].gi, leases[1].gi, "one GPU instance");
    assert_eq!(s.sim.instances().len(), 1);
    let mut seen = Vec::new();
    for (id, b) in &made {
        let (code, err) = s.run(&["start", id], b);
        assert_eq!(code, Some(0), "{err}");
        let t0 = std::time::Instant::now();
        while !b.join("rootfs/seen").exists() && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        seen.push(
            fs::read_to_string(b.join("rootfs/seen"))
                .unwrap()
                .trim()
                .to_string(),
        );
        let (code, err) = s.run(&["delete", "--force", id], b);
        assert_eq!(code, Some(0), "{err}");
    }
    let mut leased: Vec<String> = leases.iter().map(|l| l.mig_uuid.clone()).collect();
    leased.sort();
    seen.sort();
    assert_eq!(seen, leased, "each container saw its own compute instance");
    assert!(s.sim.settled_leases().is_empty(), "log:\n{}", s.sim.log());
    assert!(
        s.sim.instances().is_empty(),
        "the sharing GPU instance went with its last compute instance"
    );
}
