//! Policy through the binary on the simulator: lease limits, who may release (SUDO_UID), release = "keep",
//! inject default, unmanaged GPUs, state dir safety and crafted lease files; it must not need a GPU or docker.

mod alloc_support;

use alloc_support::{instances, leases, Sim, BIN};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn with_config(spec: &str, toml: &str) -> Sim {
    let sim = Sim::new(spec);
    std::fs::write(sim.config_path(), toml).unwrap();
    sim
}

fn err_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A refusal: the exit code, a first line naming `needle`, nothing on stdout.
/// (A profile refusal adds the planner's slot map below its first line.)
fn refused(o: &Output, code: i32, needle: &str) {
    let e = err_of(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    let first = e.lines().next().unwrap_or_default();
    assert!(first.contains(needle), "{first:?} lacks {needle:?}");
    assert!(o.stdout.is_empty());
}

#[test]
fn per_user_limits_count_the_user_charged() {
    let sim = with_config(
        "h100-80gb:1",
        "max_leases_per_user = 1\nmax_leases_total = 2\n",
    );
    let a = sim.run(&[
        "alloc",
        "--profile",
        "1g.10gb",
        "--for-uid",
        "1000",
        "--json",
    ]);
    assert!(a.status.success(), "{}", err_of(&a));
    let a: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(a["uid"], 1000, "the user named, not root, is charged");

    // Per user: uid 1000 already holds one.
    let o = sim.run(&["alloc", "--profile", "1g.10gb", "--for-uid", "1000"]);
    refused(&o, 2, "max_leases_per_user = 1");
    assert!(err_of(&o).contains("uid 1000 holds 1 lease(s) (leases 1)"));

    // Another user still may; then the total is reached for everyone, root included.
    let b = sim.run(&["alloc", "--profile", "1g.10gb", "--for-uid", "1001"]);
    assert!(b.status.success(), "{}", err_of(&b));
    refused(
        &sim.run(&["alloc", "--profile", "1g.10gb", "--for-uid", "1002"]),
        2,
        "max_leases_total = 2",
    );
    refused(
        &sim.run(&["alloc", "--profile", "1g.10gb"]),
        2,
        "max_leases_total = 2",
    );
    assert_eq!(leases(&sim.status()).len(), 2, "refusals leave nothing");
    assert_eq!(instances(&sim.status()).len(), 2);
}

/// Under sudo no --state-dir or --config is taken (src/commands/delegation.rs), so this runs on the
/// spec's default state dir, with a spec no other test uses.
#[test]
fn sudo_user_is_recorded_and_may_release_only_their_own() {
    let spec = "h100-96gb:1";
    let euid = nix::unistd::geteuid().as_raw();
    let dir = migrun::commands::default_sim_dir(&spec.parse().unwrap(), euid).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let as_user = |uid: Option<&str>, args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.arg("--simulate")
            .arg(spec)
            .args(args)
            .env_remove("MIGRUN_SIMULATE")
            .env_remove("MIGRUN_STATE_DIR")
            .env_remove("MIGRUN_CONFIG")
            .env_remove("SUDO_UID");
        if let Some(u) = uid {
            c.env("SUDO_UID", u);
        }
        c.output().unwrap()
    };
    for _ in 0..2 {
        let a = as_user(Some("1000"), &["alloc", "--profile", "19", "--json"]);
        assert!(a.status.success(), "{}", err_of(&a));
        let a: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
        assert_eq!(a["uid"], 1000, "the invoking user, not root, is charged");
    }
    // uid 1001 may not release uid 1000's lease; uid 1000 may; plain root may release any.
    refused(
        &as_user(Some("1001"), &["release", "1"]),
        4,
        "lease 1 belongs to uid 1000, not to uid 1001",
    );
    let o = as_user(Some("1000"), &["release", "1"]);
    assert!(o.status.success(), "{}", err_of(&o));
    let o = as_user(None, &["release", "2"]);
    assert!(o.status.success(), "{}", err_of(&o));
    // By name, the same rules as by id.
    let a = as_user(
        Some("1000"),
        &["alloc", "--profile", "19", "--name", "mine"],
    );
    assert!(a.status.success(), "{}", err_of(&a));
    refused(
        &as_user(Some("1001"), &["release", "mine"]),
        4,
        "lease 3 belongs to uid 1000, not to uid 1001",
    );
    let o = as_user(Some("1000"), &["release", "mine"]);
    assert!(o.status.success(), "{}", err_of(&o));
    // A sudo user may not name another user to charge.
    refused(
        &as_user(
            Some("1000"),
            &["alloc", "--profile", "19", "--for-uid", "0"],
        ),
        4,
        "--for-uid is not open to a user through sudo (uid 1000)",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn limits_count_leases_freed_by_gc_as_free() {
    // A dead holder's lease does not count against the limit: the sweep under the lock frees it first.
    let sim = with_config("h100-80gb:1", "max_leases_total = 1\n");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    sim.alloc(&["--profile", "1g.10gb", "--holder-pid", &pid]);
    refused(
        &sim.run(&["alloc", "--profile", "1g.10gb"]),
        2,
        "max_leases_total",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    sim.alloc(&["--profile", "1g.10gb"]);
    assert_eq!(leases(&sim.status()).len(), 1);
}

#[test]
fn release_keep_in_the_config_keeps_created_instances_warm() {
    let sim = with_config("h100-80gb:1", "release = \"keep\"\n");
    let (uuid, id) = sim.alloc(&["--profile", "2g.20gb"]);
    let out = sim.ok(&["release", &id.to_string()]);
    assert!(out.contains("kept warm"), "{out}");
    // Still migrun's: the next request reuses it and its release (with keep) keeps it again.
    let (again, _) = sim.alloc(&["--profile", "2g.20gb"]);
    assert_eq!(again, uuid);
}

#[test]
fn inject_default_comes_from_the_config() {
    let sim = with_config("h100-80gb:1", "inject = \"cdi\"\n");
    let o = sim.run(&[
        "--profile",
        "1g.10gb",
        "--dry-run",
        "--docker",
        "/bin/true",
        "img",
    ]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", err_of(&o));
    assert!(s.contains("--device 'migrun.io/mig=<lease-id>'"), "{s}");
}

#[test]
fn unmanaged_gpus_and_profiles_are_refused_and_never_touched() {
    let sim = with_config(
        "h100-80gb:2",
        "gpus = [1]\nallowed_profiles = [\"1g.10gb\", \"3g.40gb\"]\n",
    );
    refused(
        &sim.run(&["alloc", "--profile", "1g.10gb", "--gpu", "0"]),
        2,
        "not one migrun may manage",
    );
    refused(
        &sim.run(&["alloc", "--profile", "2g.20gb"]),
        2,
        "allowed_profiles",
    );
    // An instance someone else made on GPU 0 (Kubernetes, say) survives gc.
    let (_, foreign) = sim.create_foreign(0, 19);
    let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
    sim.ok(&["release", &id.to_string()]);
    sim.ok(&["gc"]);
    let left: Vec<String> = instances(&sim.status())
        .into_iter()
        .filter_map(|i| i.2)
        .collect();
    assert_eq!(left, vec![foreign]);
    // status says which GPUs migrun manages, in text and JSON.
    let text = sim.ok(&["status"]);
    let marked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not managed by migrun"))
        .collect();
    assert_eq!(marked.len(), 1, "{text}");
    let gpu0 = text.find("GPU 0 ").unwrap();
    let gpu1 = text.find("GPU 1 ").unwrap();
    let note = text.find("not managed by migrun").unwrap();
    assert!(
        gpu0 < note && note < gpu1,
        "the note belongs to GPU 0: {text}"
    );
    let s = sim.status();
    let managed: Vec<bool> = s["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["managed"].as_bool().unwrap())
        .collect();
    assert_eq!(managed, vec![false, true]);
}

#[test]
fn crafted_lease_claiming_created_cannot_destroy_a_foreign_instance() {
    let sim = Sim::new("h100-80gb:1");
    let out = sim.ok(&[
        "sim",
        "create-foreign",
        "--gpu",
        "0",
        "--profile",
        "3g.40gb",
    ]);
    let foreign = out.split_whitespace().last().unwrap().to_string();
    assert!(foreign.starts_with("MIG-"), "{out}");
    // migrun leases it (reuse of an unleased instance: created = false) ...
    let (uuid, id) = sim.alloc(&["--profile", "3g.40gb"]);
    assert_eq!(uuid, foreign);
    // ... and someone rewrites the lease to claim migrun created it.
    let path = sim.state_dir().join(format!("leases/{id}.json"));
    let mut l: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(l["created"], false);
    l["created"] = true.into();
    std::fs::write(&path, serde_json::to_vec(&l).unwrap()).unwrap();
    let out = sim.ok(&["release", &id.to_string()]);
    assert!(out.contains("no created/ record"), "{out}");
    let left: Vec<String> = instances(&sim.status())
        .into_iter()
        .filter_map(|i| i.2)
        .collect();
    assert_eq!(left, vec![foreign], "the foreign instance survives");
    assert!(leases(&sim.status()).is_empty());
}

#[test]
fn lease_file_symlink_is_refused() {
    let sim = Sim::new("h100-80gb:1");
    let (_, id) = sim.alloc(&["--profile", "1g.10gb"]);
    let path = sim.state_dir().join(format!("leases/{id}.json"));
    let real = sim.tmp.path().join("elsewhere.json");
    std::fs::rename(&path, &real).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    refused(&sim.run(&["release", "1"]), 2, "is a symlink");
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
}

fn state_dir_refused(prepare: impl FnOnce(&Path), needle: &str) {
    let sim = Sim::new("h100-80gb:1");
    prepare(&sim.state_dir());
    let o = sim.run(&["alloc", "--profile", "1g.10gb"]);
    refused(&o, 2, needle);
}

#[test]
fn unsafe_state_dirs_are_refused() {
    state_dir_refused(
        |p| {
            let real = p.with_file_name("real");
            std::fs::create_dir(&real).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::symlink(&real, p).unwrap();
        },
        "is a symlink; migrun refuses to follow it",
    );
    state_dir_refused(
        |p| {
            std::fs::create_dir(p).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        },
        "is owned by uid 65534",
    );
    state_dir_refused(
        |p| {
            std::fs::create_dir(p).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        "writable by group or others (mode 777)",
    );
    // A fresh one is made 0700 and owned by the caller.
    let sim = Sim::new("h100-80gb:1");
    sim.alloc(&["--profile", "1g.10gb"]);
    let m = std::fs::metadata(sim.state_dir()).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
}

#[test]
fn unknown_config_key_is_named() {
    let sim = with_config("h100-80gb:1", "max_leases_totl = 3\n");
    let o = sim.run(&["status"]);
    refused(&o, 2, "max_leases_totl");
    assert!(err_of(&o).contains("docs/config.md"));
    // An explicit --config that does not exist is an error too; the default path may be absent.
    let o = std::process::Command::new(BIN)
        .args([
            "--simulate",
            "h100-80gb",
            "--config",
            "/nonexistent/migrun.toml",
            "status",
        ])
        .env("MIGRUN_STATE_DIR", sim.state_dir())
        .output()
        .unwrap();
    refused(&o, 2, "cannot read config /nonexistent/migrun.toml");
}
