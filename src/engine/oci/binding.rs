//! What binds a lease to its container: the container id and bundle the runtime reported, recorded in the holder, and the one-time token a lease is handed over with (podman's precreate, a spawner's `alloc --handover`); never the container's own annotations.
//!
//! A container controls its config.json: annotations, env, even `io.container.manager`. Lease ids
//! are small integers and MIG UUIDs are public, so a `migrun.lease=N` marker proves nothing about who
//! holds lease N. What a container cannot choose is what the runtime says about it in the state JSON
//! on a hook's stdin (its id and bundle), and a secret migrun wrote only into the config of the
//! container it made the lease for. So:
//!
//! - a lease made by a hook or the shim is held by `Container{id, engine}` with the bundle recorded in
//!   the engine tag (`runc|bundle=/run/…`, the same `|key=value` form the launcher uses for docker's
//!   endpoint); a hook acts on it only for the container with that id **and** that bundle;
//! - podman's precreate, which runs before there is a container id, records a [`Handover`]: a random
//!   token (written into the config it returns as the `migrun.handover` annotation) and the engine
//!   process holding the lease; prestart takes the lease over only with that token, and only while the
//!   lease is still held by that process;
//! - a root spawner's `migrun alloc --handover` records the same kind of [`Handover`] for a lease held
//!   by the spawner's process, and gives the token to the container it starts (as the `migrun.handover`
//!   annotation, or the `MIGRUN_HANDOVER` env where docker cannot set annotations); the shim or prestart
//!   takes the lease over by the same rule.
//!
//! The token lives in a record of its own under the state dir (`handover/<lease>.json`), not in the
//! lease, because `migrun status --json` prints leases to whoever may run it.

use crate::lease::{Holder, Lease, LeaseId};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Annotation precreate writes with the hand-over token (and strips from any container that brings one).
pub const ANNOTATION_HANDOVER: &str = "migrun.handover";

/// The same token as env, for a docker container whose spawner used `migrun alloc --handover`: Debian
/// 12's docker.io (20.10) cannot set OCI annotations (`docker run --annotation` came with Docker 24).
pub const ENV_HANDOVER: &str = "MIGRUN_HANDOVER";

/// Separator of the engine tag's parts (the launcher's docker tags use the same).
const SEP: char = '|';
const BUNDLE_KEY: &str = "bundle=";

/// A lease made by podman's precreate or a spawner's `alloc --handover`, waiting for its container to take it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub lease: LeaseId,
    /// 128 random bits, hex; the same string the container's config carries (`migrun.handover`, `MIGRUN_HANDOVER`).
    pub token: String,
    /// The holder precreate gave the lease (the engine process, its parent); a hand-over is valid only
    /// while the lease is still held by exactly this.
    pub holder: Holder,
    pub created_at: u64,
}

/// Sub-directory of the state dir holding the shim's records of the containers it binds itself,
/// `<container id>.json` each.
pub const SHIM_DIR: &str = "shim";

/// A lease the shim binds to its container without hooks (the engine gave `runc create` a
/// `--pid-file`): written before the runtime's create runs, read back by the shim's `delete` of the
/// same container id (which releases the lease once the runtime has removed the container), and by
/// gc, which asks the recorded runtime root whether the container still exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimRecord {
    pub lease: LeaseId,
    /// The container id the engine passed (also the record's file name).
    pub id: String,
    /// The runtime's `--root` as the engine passed it (runc's default when it passed none).
    pub root: PathBuf,
    /// The canonical bundle, as in the lease's holder.
    pub bundle: PathBuf,
}

/// runc's own default `--root` when the engine passes none (root user).
pub const RUNC_DEFAULT_ROOT: &str = "/run/runc";

/// The record file of container `id` under the state dir, when `id` can name a file: runc's id
/// alphabet (`[A-Za-z0-9_+.-]`, not `.` or `..`, at most 250 bytes). `None` otherwise: the shim then
/// binds that container through hooks, as before.
pub fn shim_record_rel(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= 250
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'));
    ok.then(|| format!("{SHIM_DIR}/{id}.json"))
}

/// Does the runtime at `root` still hold container `id` (runc's `<root>/<id>/state.json`, crun's
/// `<root>/<id>/status`)? Positive evidence only: the directory goes when the runtime deletes it.
pub fn runtime_has_container(root: &Path, id: &str) -> bool {
    shim_record_rel(id).is_some() && root.join(id).is_dir()
}

/// A fresh hand-over token: 128 bits from the kernel's CSPRNG, as 32 hex digits.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compare tokens without an early exit, so timing does not tell how much of a guess was right.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bundle as it will be compared: symlinks resolved when it exists (runc reports the resolved
/// path in the state JSON; the shim sees `--bundle` as the engine wrote it), as given otherwise.
pub fn canonical_bundle(bundle: &Path) -> PathBuf {
    std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf())
}

fn escape(s: &str) -> String {
    s.replace('%', "%25").replace(SEP, "%7C")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(t) = tail.strip_prefix("%7C") {
            out.push(SEP);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("%25") {
            out.push('%');
            rest = t;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The engine tag of a container holder: `<engine>|bundle=<bundle>` (a `|` or `%` in the path escaped).
pub fn engine_tag(engine: &str, bundle: &Path) -> String {
    let family = crate::engine::engine_family(engine);
    format!(
        "{family}{SEP}{BUNDLE_KEY}{}",
        escape(&bundle.to_string_lossy())
    )
}

/// The bundle recorded in an engine tag, if any.
pub fn tag_bundle(tag: &str) -> Option<PathBuf> {
    tag.split(SEP)
        .skip(1)
        .find_map(|p| p.strip_prefix(BUNDLE_KEY))
        .map(|b| PathBuf::from(unescape(b)))
}

/// The holder a hook or the shim records for a container: the id and bundle the runtime reported,
/// and the process whose life shows the container may still run (its init, once prestart knows it).
pub fn container_holder(id: &str, engine: &str, bundle: &Path, pid: Option<u32>) -> Holder {
    Holder::Container {
        id: id.to_string(),
        engine: engine_tag(engine, bundle),
        pid: pid.and_then(|p| crate::lease::process_start_time(p).map(|t| (p, t))),
    }
}

/// Is lease `l` bound to the container with this id and (canonical) bundle? A lease without a recorded
/// bundle (the launcher's, or one made before bundles were recorded) is bound to no hook's container.
pub fn bound_to(l: &Lease, id: &str, bundle: &Path) -> bool {
    match &l.holder {
        Holder::Container {
            id: held, engine, ..
        } => held == id && tag_bundle(engine).as_deref() == Some(bundle),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::lease;
    use super::*;

    #[test]
    fn tags_carry_the_bundle_and_survive_odd_paths() {
        for b in ["/run/b", "/x|host=evil/%7C%/y", "/a b/c"] {
            let tag = engine_tag("runc", Path::new(b));
            assert_eq!(tag.matches(SEP).count(), 1, "{tag}");
            assert_eq!(tag_bundle(&tag).as_deref(), Some(Path::new(b)), "{tag}");
            assert_eq!(crate::engine::engine_family(&tag), "runc");
        }
        // An engine given as a tag keeps only its family.
        assert_eq!(
            engine_tag("docker|host=unix:///d.sock", Path::new("/b")),
            "docker|bundle=/b"
        );
        assert_eq!(tag_bundle("docker|host=unix:///d.sock"), None);
        assert_eq!(tag_bundle("runc"), None);
    }

    #[test]
    fn a_lease_is_bound_by_id_and_bundle_together() {
        let b = Path::new("/run/b1");
        let l = lease(1, "MIG-1", container_holder("c1", "runc", b, None));
        assert!(bound_to(&l, "c1", b));
        assert!(
            !bound_to(&l, "c1", Path::new("/run/b2")),
            "same id, other bundle"
        );
        assert!(!bound_to(&l, "c2", b), "other id, same bundle");
        let legacy = lease(
            2,
            "MIG-2",
            Holder::Container {
                id: "c1".into(),
                engine: "runc".into(),
                pid: None,
            },
        );
        assert!(!bound_to(&legacy, "c1", b), "no bundle recorded: nobody's");
        let process = lease(
            3,
            "MIG-3",
            Holder::Process {
                pid: 1,
                start_time: 1,
            },
        );
        assert!(!bound_to(&process, "c1", b));
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(tokens_equal(&a, &a.clone()));
        assert!(!tokens_equal(&a, &b));
        assert!(!tokens_equal(&a, &a[..31]));
        assert!(!tokens_equal("", ""), "an empty token proves nothing");
    }
}
