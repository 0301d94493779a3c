//! Host paths that reach NVIDIA device nodes: what a `--device` or bind-mount source names once `.`, `..`, `//` and
//! symlinks are resolved the way the kernel resolves them, and whether that is, holds or copies a GPU's node.
//!
//! Why more than a string compare: `/dev/./nvidia0`, `//dev/nvidia0` and `/dev/../dev/nvidia0` all open
//! `/dev/nvidia0`, and so does a symlink on the way (`/tmp/x -> /dev/nvidia0`, `/dev/char/195:0`). The lexical form
//! is refused even where no node exists (the simulator's host has none); where the path exists, the form with every
//! symlink followed and the node's device number decide too, so a copy made with `mknod` elsewhere is caught.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The character-device major of `/dev/nvidia0`…`/dev/nvidiaN` and `/dev/nvidiactl`, fixed by the driver.
pub const NVIDIA_MAJOR: u64 = 195;

/// Symlinks followed on one path before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Entries looked at under a `--device` directory before giving up (docker maps every node under it).
const MAX_WALK: usize = 10_000;

/// The majors of NVIDIA's character devices: 195, and the dynamic ones the driver registers (`nvidia-uvm`,
/// `nvidia-caps`, `nvidia-caps-imex-channels`, …) as `/proc/devices` lists them.
pub fn nvidia_majors() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    majors_from(&text)
}

fn majors_from(proc_devices: &str) -> Vec<u64> {
    let mut out = vec![NVIDIA_MAJOR];
    let mut chars = false;
    for line in proc_devices.lines() {
        match line.trim() {
            "Character devices:" => chars = true,
            "Block devices:" => chars = false,
            l if chars => {
                let mut it = l.split_whitespace();
                if let (Some(n), Some(name)) = (it.next(), it.next()) {
                    if let (Ok(n), true) = (n.parse::<u64>(), name.starts_with("nvidia")) {
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `p` made absolute against `base` and normalised by its text alone: `.` and empty parts dropped, `..` taking the
/// last part off. What the string names when no symlink is involved.
pub fn lexical(p: &Path, base: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in base.join(p).components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(p: &Path) -> impl Iterator<Item = Step> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(n) => Some(Step::Name(n.to_owned())),
    })
}

/// `p` (made absolute against `base`) with every symlink on the way followed, part by part, as the kernel does
/// (`..` after a symlink leaves the link's target, not the link); from the first part that does not exist on, the
/// rest is taken by its text (like `realpath -m`). `None` when symlinks loop or a link cannot be read.
pub fn resolve(p: &Path, base: &Path) -> Option<PathBuf> {
    let mut todo: VecDeque<Step> = steps(&base.join(p)).collect();
    let mut out = PathBuf::from("/");
    let mut links = 0;
    let mut exists = true;
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => out = PathBuf::from("/"),
            Step::Parent => {
                out.pop();
            }
            Step::Name(n) => {
                let next = out.join(&n);
                if exists {
                    match std::fs::symlink_metadata(&next) {
                        Ok(m) if m.file_type().is_symlink() => {
                            links += 1;
                            if links > MAX_LINKS {
                                return None;
                            }
                            let target = std::fs::read_link(&next).ok()?;
                            // A relative target continues from the link's directory (`out`), an absolute one from /.
                            for s in steps(&target).collect::<Vec<_>>().into_iter().rev() {
                                todo.push_front(s);
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(_) => exists = false,
                    }
                }
                out = next;
            }
        }
    }
    Some(out)
}

/// Why a normalised absolute path reaches NVIDIA device nodes by its name alone: it is `/` or `/dev` (docker maps or
/// mounts every node under them), a `/dev/nvidia*` node or directory or anything under one, or a `/dev/char`,
/// `/dev/block` alias `MAJOR:MINOR` of an NVIDIA major.
pub fn named_reach(p: &Path, majors: &[u64]) -> Option<String> {
    let parts: Vec<&str> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_str().unwrap_or("\u{fffd}")),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [] => Some("/ holds every host device node, /dev/nvidia* among them".into()),
        ["dev"] => Some("/dev holds every host device node, /dev/nvidia* among them".into()),
        ["dev", name] if name.starts_with("nvidia-caps") => Some(format!(
            "/dev/{name} holds NVIDIA's MIG capability nodes, every slice's"
        )),
        ["dev", name] if name.starts_with("nvidia") => {
            Some(format!("/dev/{name} is an NVIDIA device node"))
        }
        ["dev", name, ..] if name.starts_with("nvidia") => Some(format!(
            "{} is under /dev/{name}, NVIDIA's device nodes",
            p.display()
        )),
        ["dev", "char", alias] => {
            let major = alias.split(':').next()?.parse::<u64>().ok()?;
            majors
                .contains(&major)
                .then(|| format!("{} names an NVIDIA device ({alias})", p.display()))
        }
        _ => None,
    }
}

/// Why the existing node at `p` (symlinks followed) is NVIDIA's, by its device number: a copy made with `mknod`
/// anywhere opens the same GPU as the original.
pub fn node_reach(p: &Path, majors: &[u64]) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    nvidia_node(&m, majors).then(|| {
        let (major, minor) = dev_numbers(&m);
        format!(
            "{} is a character device of NVIDIA's driver ({major}:{minor})",
            p.display()
        )
    })
}

fn dev_numbers(m: &std::fs::Metadata) -> (u64, u64) {
    let rdev = m.rdev();
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

fn nvidia_node(m: &std::fs::Metadata, majors: &[u64]) -> bool {
    m.file_type().is_char_device() && majors.contains(&dev_numbers(m).0)
}

/// Why a directory given to `--device` holds an NVIDIA node: docker walks it (without following symlinked
/// directories) and maps every device node it finds, so migrun walks it the same way first.
pub fn walk_reach(dir: &Path, majors: &[u64]) -> Option<String> {
    if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return Some(format!(
                    "{} holds more than {MAX_WALK} entries, too many for migrun to check for NVIDIA device nodes",
                    dir.display()
                ));
            }
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if nvidia_node(&m, majors) {
                let (major, minor) = dev_numbers(&m);
                return Some(format!(
                    "{} holds {}, a character device of NVIDIA's driver ({major}:{minor})",
                    dir.display(),
                    path.display()
                ));
            }
            if m.is_dir() {
                todo.push(path);
            }
        }
    }
    None
}

/// Why host path `given` reaches an NVIDIA device node, checked by its text, with its symlinks followed, and by the
/// device number of what it names; `walk` also looks inside a directory (for `--device`, which maps every node under
/// one). Relative paths count from `base`.
pub fn reach(given: &str, base: &Path, majors: &[u64], walk: bool) -> Option<String> {
    let p = Path::new(given);
    let plain = lexical(p, base);
    if let Some(why) = named_reach(&plain, majors) {
        return Some(why);
    }
    let Some(real) = resolve(p, base) else {
        return Some(format!(
            "{given} has too many levels of symlinks for migrun to tell where it leads"
        ));
    };
    if let Some(why) = named_reach(&real, majors) {
        return Some(format!("{given} leads to {}: {why}", real.display()));
    }
    node_reach(&real, majors).or_else(|| walk.then(|| walk_reach(&real, majors)).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAJORS: &[u64] = &[NVIDIA_MAJOR, 508];

    #[test]
    fn lexical_variants_of_a_node_are_the_node() {
        let root = Path::new("/");
        for v in [
            "/dev/nvidia0",
            "/dev/./nvidia0",
            "//dev/nvidia0",
            "/dev//nvidia0",
            "/dev/../dev/nvidia0",
            "/../../dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap12",
            "/dev/nvidia-caps",
            "/dev/nvidiactl",
            "/dev/",
            "/dev/.",
            "/",
            "/tmp/..",
            "/dev/char/195:0",
            "/dev/char/508:1",
        ] {
            assert!(
                named_reach(&lexical(Path::new(v), root), MAJORS).is_some(),
                "{v}"
            );
        }
        for v in [
            "/dev/null",
            "/dev/fuse",
            "/dev/dri",
            "/dev/char/1:3",
            "/tmp/nvidia0",
            "/devx",
        ] {
            assert!(
                named_reach(&lexical(Path::new(v), root), MAJORS).is_none(),
                "{v}"
            );
        }
        assert_eq!(
            lexical(Path::new("dev/nvidia0"), Path::new("/")),
            Path::new("/dev/nvidia0")
        );
        assert_eq!(
            lexical(Path::new("../x"), Path::new("/a/b")),
            Path::new("/a/x")
        );
    }

    #[test]
    fn symlinks_are_followed_even_when_the_target_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::os::unix::fs::symlink("/dev/nvidia0", t.join("dangling")).unwrap();
        std::os::unix::fs::symlink("/dev", t.join("devdir")).unwrap();
        std::fs::create_dir(t.join("sub")).unwrap();
        std::os::unix::fs::symlink("../devdir/./nvidia-caps/x", t.join("sub/rel")).unwrap();
        std::os::unix::fs::symlink("loop2", t.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", t.join("loop2")).unwrap();
        let r = |p: &str| resolve(&t.join(p), Path::new("/"));
        assert_eq!(r("dangling").unwrap(), Path::new("/dev/nvidia0"));
        assert_eq!(r("devdir/nvidia0").unwrap(), Path::new("/dev/nvidia0"));
        assert_eq!(
            r("sub/rel").unwrap(),
            Path::new("/dev/nvidia-caps/x"),
            "a relative target counts from the link's directory"
        );
        // `..` after a symlink leaves the target (the kernel's rule), not the link's directory.
        assert_eq!(r("devdir/../dev/null").unwrap(), Path::new("/dev/null"));
        assert_eq!(r("loop1"), None);

        let base = Path::new("/");
        for p in ["dangling", "devdir", "devdir/", "sub/rel", "loop1"] {
            let given = t.join(p).display().to_string();
            let why = reach(&given, base, MAJORS, true).unwrap_or_else(|| panic!("{p}"));
            assert!(why.contains(&given), "{p}: {why}");
        }
        assert!(reach(&t.display().to_string(), base, MAJORS, true).is_none());
        assert!(reach("/dev/null", base, MAJORS, true).is_none());
        // Relative to where docker resolves it.
        assert!(reach("nvidia0", Path::new("/dev"), MAJORS, false).is_some());
    }

    #[test]
    fn copies_of_a_node_are_caught_by_their_number() {
        // /dev/null is 1:3; pretend 1 is one of NVIDIA's majors to see the number decide, name aside.
        let majors = [NVIDIA_MAJOR, 1];
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", d.path().join("n")).unwrap();
        let why = reach(
            &d.path().join("n").display().to_string(),
            Path::new("/"),
            &majors,
            false,
        )
        .unwrap();
        assert!(why.contains("(1:3)"), "{why}");
        // Walking does not follow symlinks (docker's walk does not either): the link inside is not a node.
        assert!(walk_reach(d.path(), &majors).is_none());
        assert!(reach("/dev/null", Path::new("/"), MAJORS, true).is_none());
    }

    #[test]
    fn majors_come_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia\n235 nvidia-caps\n509 nvidia-uvm\n\nBlock devices:\n 259 nvidia-fake-block\n";
        assert_eq!(majors_from(text), vec![195, 235, 509]);
        assert_eq!(majors_from(""), vec![195]);
    }
}
