//! CDI spec files on file systems that refuse them: a read-only and a full tmpfs give one line naming the dir and leave nothing half-written. Needs root (mount); fails otherwise.

mod common;

use common::engines::{require, require_root, run_ok};
use migrun::cdi::{self, store};
use migrun::gpu::hostfacts::HostFacts;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a temp dir, unmounted (lazily, so a failing test cannot leave it busy) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new(require("mount"))
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
                .arg("migrun-cdi-test")
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn remount_ro(&self) {
        run_ok(
            Command::new(require("mount"))
                .args(["-o", "remount,ro"])
                .arg(self.path()),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// A spec for lease `lease` on GI 1 / CI 0 of the captured H200.
fn spec(lease: u64) -> cdi::types::Spec {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h200-141gb-caps");
    let root = tempfile::tempdir().unwrap();
    let put = |rel: &str, body: String| {
        let p = root.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    };
    let read = |f: &str| fs::read_to_string(fixtures.join(f)).unwrap();
    put("proc/driver/nvidia-caps/mig-minors", read("mig-minors.txt"));
    put("proc/devices", read("proc-devices.txt"));
    fs::create_dir_all(root.path().join("proc/driver/nvidia/gpus")).unwrap();
    let facts = HostFacts::read_from(root.path()).unwrap();
    let slice = cdi::Slice {
        lease,
        name: None,
        mig_uuid: "MIG-00000000-0000-5000-8000-000000000001".into(),
        gpu_minor: 0,
        gi: 1,
        ci: 0,
    };
    cdi::build(&slice, &facts, None).unwrap()
}

fn assert_one_line_naming(msg: &str, dir: &Path, words: &[&str]) {
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains(&dir.display().to_string()),
        "names {dir:?}: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "{w:?} missing from: {msg}");
    }
}

#[test]
fn a_read_only_dir_refuses_with_one_line_and_keeps_the_old_spec() {
    let fs_ = Tmpfs::new("1m");
    let dir: PathBuf = fs_.path().join("cdi");
    let old = store::write(&dir, 1, &spec(1)).unwrap();
    let before = fs::read(&old).unwrap();
    fs_.remount_ro();

    let e = store::write(&dir, 1, &spec(1)).unwrap_err();
    assert_one_line_naming(
        &e.to_string(),
        &dir,
        &["cannot write a spec in", "Read-only"],
    );
    let e = store::write(&dir, 2, &spec(2)).unwrap_err();
    assert_one_line_naming(&e.to_string(), &dir, &["Read-only"]);
    let e = store::remove(&dir, 1).unwrap_err();
    assert_one_line_naming(&e.to_string(), &dir, &["cannot remove a spec from"]);
    // A dir that does not exist yet cannot be created either.
    let missing = fs_.path().join("new/cdi");
    let e = store::write(&missing, 3, &spec(3)).unwrap_err();
    assert_one_line_naming(&e.to_string(), &missing, &["cannot create"]);

    assert_eq!(fs::read(&old).unwrap(), before, "the old spec is untouched");
    assert_eq!(names(&dir), ["migrun-mig-1.json"]);
    assert_eq!(store::list(&dir).unwrap(), vec![(1, old)]);
}

#[test]
fn a_full_dir_refuses_with_one_line_and_leaves_no_temp_file() {
    let fs_ = Tmpfs::new("64k");
    let dir = fs_.path().join("cdi");
    fs::create_dir(&dir).unwrap();
    // Fill the file system; tmpfs counts whole pages, so write until it refuses.
    let filler = dir.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &page).is_ok() {}
    drop(f);

    let e = store::write(&dir, 7, &spec(7)).unwrap_err();
    assert_one_line_naming(
        &e.to_string(),
        &dir,
        &["cannot write a spec in", "No space left"],
    );
    assert_eq!(names(&dir), ["filler"], "no spec and no temp file");
    assert!(store::list(&dir).unwrap().is_empty());

    // With room again the same write works.
    fs::remove_file(&filler).unwrap();
    let p = store::write(&dir, 7, &spec(7)).unwrap();
    assert_eq!(names(&dir), ["migrun-mig-7.json"]);
    assert!(p.is_file());
}
