//! The layer check: which rooms of src/ may name which, as docs/design.md draws them; a test of the check shows it
//! catches a forbidden import planted in a copy of the tree. It reads only src/ of this repository.
//!
//! Dependencies run one way: leaves (exit, env, out, profile, statedir) name nothing of the crate;
//! then gpu -> lease -> policy -> alloc -> engine/cdi -> the edge (cli, commands, man, main), each naming
//! only what sits below it. So nothing below the edge names the edge; the allocator never names an
//! engine (it learns liveness through `HolderProbe`); the pure policy room does no I/O, takes no
//! clock and never names the on-disk registry, the state dir or the allocator; lease records and their
//! registry never name the policy or the allocator; the hardware room never names leases; the product
//! never names the benchmarks.

use std::path::{Path, PathBuf};

/// Rules as (files they apply to, forbidden text, why).
struct Rule {
    applies: fn(&str) -> bool,
    forbidden: &'static [&'static str],
    why: &'static str,
}

fn is_edge(rel: &str) -> bool {
    rel == "main.rs" || rel == "cli.rs" || rel == "man.rs" || rel.starts_with("commands/")
}

const LEAVES: &[&str] = &["exit.rs", "env.rs", "out.rs", "profile.rs", "statedir.rs"];

/// The file is in `room` (`room/…` or `room.rs`).
fn in_room(rel: &str, room: &str) -> bool {
    rel.strip_prefix(room)
        .is_some_and(|rest| rest.starts_with('/') || rest == ".rs")
}

fn rules() -> Vec<Rule> {
    vec![
        Rule {
            applies: |rel| !is_edge(rel),
            forbidden: &["crate::commands", "crate::cli", "crate::man"],
            why: "nothing below the edge names the edge",
        },
        Rule {
            applies: |rel| rel.starts_with("alloc/"),
            forbidden: &["crate::engine", "crate::cdi"],
            why: "the allocator learns liveness through HolderProbe, never from an engine",
        },
        Rule {
            applies: |rel| in_room(rel, "policy"),
            forbidden: &[
                "std::fs",
                "std::io",
                "std::env",
                "std::net",
                "std::process",
                "std::thread",
                "nix::",
                "libc::",
                "Registry",
                "lease::registry",
                "crate::statedir",
                "crate::config",
                "crate::alloc",
                "crate::engine",
                "crate::cdi",
                "crate::gpu::nvml",
                "Backend",
                "SystemTime",
                "Instant",
            ],
            why: "the policy room is pure: snapshot and request in, plan out",
        },
        Rule {
            applies: |rel| in_room(rel, "lease"),
            forbidden: &[
                "crate::policy",
                "crate::alloc",
                "crate::engine",
                "crate::cdi",
                "crate::gpu::nvml",
                "Backend",
            ],
            why: "lease records and their registry sit below the policy and the allocator, and never call NVML",
        },
        Rule {
            applies: |rel| in_room(rel, "ops"),
            forbidden: &[
                "crate::engine",
                "crate::cdi",
                "write_atomic",
                "update_counters",
                "std::fs::write",
                "Ledger::append",
            ],
            why: "usage and metrics read the device, the records and the ledger; they change nothing and never name an engine",
        },
        Rule {
            applies: |rel| in_room(rel, "gpu"),
            forbidden: &[
                "crate::lease",
                "crate::policy",
                "crate::alloc",
                "crate::engine",
                "crate::cdi",
            ],
            why: "the hardware room sits below leases, policy and allocator",
        },
        Rule {
            applies: |_| true,
            forbidden: &["crate::bench", "migrun_bench"],
            why: "the product never names the benchmarks",
        },
    ]
}

/// Code of a file without comments (a rule is about what the code names, not what prose mentions).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A leaf may name only itself (`$crate::out::…` in its macros) and the exit codes, which sit
/// below everything; its unit tests' `use super::*` is itself too.
fn leaf_violations(rel: &str, code: &str) -> Vec<String> {
    let me = rel.trim_end_matches(".rs");
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != me && name != "exit" {
                found.push(format!(
                    "src/{rel}:{}: {} (a leaf names nothing of the crate but the exit codes)",
                    n + 1,
                    line.trim()
                ));
            }
        }
        if line.contains("super::") && line.trim() != "use super::*;" {
            found.push(format!(
                "src/{rel}:{}: {} (a leaf names nothing of the crate but the exit codes)",
                n + 1,
                line.trim()
            ));
        }
    }
    found
}

/// Every violation under `src`, as `file:line: text (why)`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        // The benchmarks' own binaries may name the bench; nothing else may.
        if rel.starts_with("bin/") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        if LEAVES.contains(&rel.as_str()) {
            found.extend(leaf_violations(&rel, &code));
        }
        for rule in rules().iter().filter(|r| (r.applies)(&rel)) {
            for (n, line) in code.lines().enumerate() {
                for bad in rule.forbidden {
                    if line.contains(bad) {
                        found.push(format!(
                            "src/{rel}:{}: {} ({})",
                            n + 1,
                            line.trim(),
                            rule.why
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_tree_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v = violations(&src);
    assert!(v.is_empty(), "forbidden imports:\n{}", v.join("\n"));
    // The product's library does not carry the benchmarks.
    assert!(
        !src.join("bench").exists(),
        "src/bench belongs in crates/migrun-bench"
    );
}

#[test]
fn the_check_catches_a_planted_forbidden_import() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["alloc", "policy", "commands", "gpu", "lease"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("exit.rs"), "//! leaf\npub const OK: i32 = 0;\n").unwrap();
    std::fs::write(
        src.join("profile.rs"),
        "const X: i32 = crate::exit::OK;\nmod tests {\n    use super::*;\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("alloc/mod.rs"), "use crate::lease::Lease;\n").unwrap();
    std::fs::write(src.join("commands/mod.rs"), "use crate::cli::Cli;\n").unwrap();
    std::fs::write(
        src.join("policy/plan.rs"),
        "// std::fs in a comment is prose\nuse crate::lease::{Lease, LeaseState};\n",
    )
    .unwrap();
    // Each room names what sits below it.
    std::fs::write(src.join("gpu/mod.rs"), "use crate::profile::ProfileSpec;\n").unwrap();
    std::fs::write(src.join("lease/mod.rs"), "use crate::gpu::Placement;\n").unwrap();
    std::fs::write(src.join("policy/no_room.rs"), "use crate::gpu::MigState;\n").unwrap();
    assert_eq!(
        violations(&src),
        Vec::<String>::new(),
        "a clean tree passes"
    );
    for (file, line, why) in [
        (
            "exit.rs",
            "use crate::gpu::GpuError;",
            "a leaf names nothing",
        ),
        (
            "profile.rs",
            "use crate::gpu::GiProfile;",
            "a leaf names nothing",
        ),
        ("alloc/mod.rs", "use crate::engine::probe;", "HolderProbe"),
        (
            "lease/mod.rs",
            "use crate::commands::InputError;",
            "below the edge",
        ),
        ("config.rs", "use crate::cli::InjectMode;", "below the edge"),
        ("policy/plan.rs", "let x = std::fs::read(p);", "pure"),
        (
            "policy/plan.rs",
            "let t = std::time::Instant::now();",
            "pure",
        ),
        (
            "policy/no_room.rs",
            "use crate::statedir::StateDir;",
            "pure",
        ),
        ("policy/no_room.rs", "fn f(b: &mut dyn Backend) {}", "pure"),
        ("policy/placement.rs", "use crate::config::Config;", "pure"),
        (
            "lease/mod.rs",
            "use crate::policy::Plan;",
            "below the policy",
        ),
        (
            "lease/registry.rs",
            "use crate::alloc::GcReport;",
            "below the policy",
        ),
        ("gpu/mod.rs", "use crate::lease::Lease;", "hardware room"),
        ("gpu/rules.rs", "use crate::policy::plan;", "hardware room"),
        ("gpu.rs", "pub use crate::bench::x;", "benchmarks"),
    ] {
        let p = src.join(file);
        let before = std::fs::read_to_string(&p).unwrap_or_default();
        std::fs::write(&p, format!("{before}{line}\n")).unwrap();
        let v = violations(&src);
        assert!(
            v.len() == 1 && v[0].contains(why) && v[0].starts_with(&format!("src/{file}:")),
            "{file}: {v:?}"
        );
        std::fs::write(&p, before).unwrap();
    }
}
