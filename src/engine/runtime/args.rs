//! runc's command line as runc 1.1 reads it (urfave/cli v1 over Go's `flag`), so the shim finds the same subcommand, bundle and container id that runc will use; it must never guess.
//!
//! Why exactly: the shim decides from `<bundle>/config.json` whether a container gets a slice, is
//! guarded, or passes through. If it read another bundle than runc does (`run ID --bundle B`: runc
//! takes B, a naive parser the current directory), a container could skip the guard or get a slice
//! for a config runc never runs. So this follows runc's own parser step by step:
//!
//! - global flags: Go's `flag` package, stopping at the first non-flag (the subcommand) or after `--`;
//!   a flag with a value takes the next argument unless written `--f=v`; `-f` and `--f` are the same;
//! - subcommand flags: urfave/cli v1 first *reorders* the arguments (every known flag, with the
//!   argument after it when it has no `=`, moves before the rest; `--` keeps what follows in place),
//!   then Go's `flag` parses them; so `create ID --bundle B` and `create --bundle B ID` are the same,
//!   and a switch followed by the id (`--no-pivot ID --bundle B`) swallows it and fails;
//! - `create` and `run` take exactly one argument, the id; `-b` and `--bundle` together are an error;
//!   `--help`/`-h` (and the global `--version`/`-v`) print and create nothing.
//!
//! A `create`/`run` call the shim cannot read this way (an unknown flag, a bad value, a wrong number
//! of ids) is refused by the shim rather than handed over: runc would refuse most of them too, and a
//! flag it knows and the shim does not might change which config it reads. The flag tables are runc
//! 1.1's, plus `--pidfd-socket` from 1.2. Checked against runc 1.1.5 by `tests/hooks_shim_args.rs`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A switch: `--f` or `--f=<bool>`; never takes the next argument.
    Bool,
    /// Takes a value: `--f v` or `--f=v`.
    Text,
    /// Takes an integer value (Go's `strconv.ParseInt(v, 0, 64)`).
    Int,
}

/// One flag: its names (aliases share one value; using two of them is an error) and kind.
type Flag = (&'static [&'static str], Kind);

/// runc 1.1's global flags, with urfave/cli's `--help` and `--version`.
const GLOBAL: &[Flag] = &[
    (&["debug"], Kind::Bool),
    (&["log"], Kind::Text),
    (&["log-format"], Kind::Text),
    (&["root"], Kind::Text),
    (&["criu"], Kind::Text),
    (&["systemd-cgroup"], Kind::Bool),
    (&["rootless"], Kind::Text),
    (&["help", "h"], Kind::Bool),
    (&["version", "v"], Kind::Bool),
];

/// `runc create` (and urfave/cli's `--help` every command gets).
const CREATE: &[Flag] = &[
    (&["bundle", "b"], Kind::Text),
    (&["console-socket"], Kind::Text),
    (&["pidfd-socket"], Kind::Text),
    (&["pid-file"], Kind::Text),
    (&["no-pivot"], Kind::Bool),
    (&["no-new-keyring"], Kind::Bool),
    (&["preserve-fds"], Kind::Int),
    (&["help", "h"], Kind::Bool),
];

/// `runc run`: create's flags and three of its own.
const RUN_ONLY: &[Flag] = &[
    (&["detach", "d"], Kind::Bool),
    (&["keep"], Kind::Bool),
    (&["no-subreaper"], Kind::Bool),
];

/// `runc delete` (and urfave/cli's `--help`).
const DELETE: &[Flag] = &[(&["force", "f"], Kind::Bool), (&["help", "h"], Kind::Bool)];

/// What the shim needs to know about one runtime invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The subcommand (`create`, `start`, `features` …); `None` for `--version`, `--help` or nothing.
    pub subcommand: Option<String>,
    /// `--root` (where the runtime keeps container state; tells the engine apart).
    pub root: Option<PathBuf>,
    /// `--log` and `--log-format`: where the engine reads a failed runtime's error from.
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    /// For `create`/`run`: `--bundle` (empty or absent: the current directory) and the container id;
    /// for `delete`, the id alone (absent when runc would refuse the call).
    pub bundle: Option<PathBuf>,
    pub id: Option<String>,
    /// For `create`: `--pid-file`, where runc writes the container's init pid once it exists. With
    /// it, the shim binds the lease to that pid itself instead of through a prestart hook.
    pub pid_file: Option<PathBuf>,
    /// runc would only print help or its version for this call.
    pub prints_only: bool,
    /// Why runc's parser would reject this `create`/`run` (or the shim cannot be sure it reads it the
    /// same way); the shim then refuses the call.
    pub unreadable: Option<String>,
}

impl Invocation {
    /// Does this call create a container (so the bundle must get its slice first)? A call whose
    /// arguments the shim could not read counts when it names `create` or `run` anywhere: it must
    /// not pass through unexamined.
    pub fn creates(&self) -> bool {
        matches!(self.subcommand.as_deref(), Some("create" | "run")) && !self.prints_only
    }

    /// The bundle directory as an absolute path (`--bundle` relative to the current directory, or
    /// the current directory itself when absent or empty, as runc reads it).
    pub fn bundle_dir(&self) -> PathBuf {
        let cwd = || std::env::current_dir().unwrap_or_default();
        match &self.bundle {
            Some(b) if b.is_absolute() => b.clone(),
            Some(b) if !b.as_os_str().is_empty() => cwd().join(b),
            _ => cwd(),
        }
    }

    /// Can this call go to the next runtime untouched? True for every subcommand but
    /// `create`/`run`, and for a create of a bundle that asks for no slice and needs no guard
    /// ([`crate::engine::oci::shim_passes_through`]). A create the shim could not read never is.
    pub fn hands_over_untouched(&self) -> bool {
        !self.creates()
            || (self.unreadable.is_none()
                && crate::engine::oci::shim_passes_through(&self.bundle_dir()))
    }
}

/// The flag a word names, if it is one of `table` (urfave/cli's `argIsFlag`: one or two leading
/// dashes, anything after `=` ignored; `-` and `--` are never flags).
fn known_flag(table: &[Flag], arg: &OsStr) -> Option<Flag> {
    let a = arg.as_bytes();
    if a == b"-" || a == b"--" || !a.starts_with(b"-") {
        return None;
    }
    let body = a
        .strip_prefix(b"--")
        .or_else(|| a.strip_prefix(b"-"))
        .unwrap_or(a);
    let name = body.split(|&c| c == b'=').next().unwrap_or(body);
    table
        .iter()
        .copied()
        .find(|(names, _)| names.iter().any(|n| n.as_bytes() == name))
}

/// urfave/cli v1's `reorderArgs`: known flags (and the word after one written without `=`, unless
/// that word is itself a known flag) first, the rest after, everything after `--` kept behind it.
fn reorder(table: &[Flag], args: &[OsString]) -> Vec<OsString> {
    let mut flags = Vec::new();
    let mut rest = Vec::new();
    let mut may_be_value = false;
    for (i, arg) in args.iter().enumerate() {
        let is_flag = known_flag(table, arg).is_some();
        if may_be_value && !is_flag {
            may_be_value = false;
            flags.push(arg.clone());
        } else if arg.as_bytes() == b"--" {
            rest.insert(0, arg.clone());
            rest.extend(args[i + 1..].iter().cloned());
            break;
        } else if is_flag {
            flags.push(arg.clone());
            may_be_value = !arg.as_bytes().contains(&b'=');
        } else {
            rest.push(arg.clone());
        }
    }
    flags.extend(rest);
    flags
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Some(true),
        b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(v, 0, 64)` for the forms anyone writes (sign, then decimal, `0x`, `0o`,
/// `0b` or a leading-0 octal); anything else is refused, which at worst refuses a call runc takes.
fn go_int(v: &[u8]) -> bool {
    let s = String::from_utf8_lossy(v);
    let digits = s.strip_prefix(['+', '-']).unwrap_or(&s);
    let (radix, body) = if let Some(b) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, b)
    } else if let Some(b) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, b)
    } else if let Some(b) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    !body.is_empty() && i64::from_str_radix(body, radix).is_ok()
}

/// The flags Go's `flag` package read (by their first name, with the value as given; `Bool` ones as
/// "true"/"false") and the arguments left after them.
type Parsed = (Vec<(&'static str, OsString)>, Vec<OsString>);

/// Go's `FlagSet.Parse` over `args` with `table`, then urfave/cli's check that two names of one flag
/// were not both used.
fn go_parse(table: &[Flag], args: &[OsString]) -> Result<Parsed, String> {
    let mut set: Vec<(&'static str, OsString)> = Vec::new();
    let mut used: Vec<(&'static str, &'static str)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_bytes();
        if a.len() < 2 || a[0] != b'-' {
            break;
        }
        if a == b"--" {
            i += 1;
            break;
        }
        let body = a.strip_prefix(b"--").unwrap_or(&a[1..]);
        if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
            return Err(format!("bad flag syntax: {}", args[i].to_string_lossy()));
        }
        let (name, inline) = match body.iter().skip(1).position(|&c| c == b'=') {
            Some(at) => (&body[..at + 1], Some(&body[at + 2..])),
            None => (body, None),
        };
        let shown = String::from_utf8_lossy(name).into_owned();
        let Some((names, kind)) = table
            .iter()
            .copied()
            .find(|(names, _)| names.iter().any(|n| n.as_bytes() == name))
        else {
            return Err(format!("flag provided but not defined: -{shown}"));
        };
        let canonical = names[0];
        let given = names
            .iter()
            .copied()
            .find(|n| n.as_bytes() == name)
            .unwrap_or(canonical);
        if let Some((_, other)) = used.iter().find(|(c, g)| *c == canonical && *g != given) {
            return Err(format!(
                "Cannot use two forms of the same flag: {given} {other}"
            ));
        }
        used.push((canonical, given));
        i += 1;
        let value: OsString = match kind {
            Kind::Bool => match inline {
                None => "true".into(),
                Some(v) => match go_bool(v) {
                    Some(b) => b.to_string().into(),
                    None => {
                        return Err(format!(
                            "invalid boolean value {:?} for -{shown}",
                            String::from_utf8_lossy(v)
                        ))
                    }
                },
            },
            Kind::Text | Kind::Int => {
                let v: OsString = match inline {
                    Some(v) => OsStr::from_bytes(v).to_os_string(),
                    None => match args.get(i) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => return Err(format!("flag needs an argument: -{shown}")),
                    },
                };
                if kind == Kind::Int && !go_int(v.as_bytes()) {
                    return Err(format!(
                        "invalid value {:?} for flag -{shown}",
                        v.to_string_lossy()
                    ));
                }
                v
            }
        };
        set.retain(|(c, _)| *c != canonical);
        set.push((canonical, value));
    }
    Ok((set, args[i..].to_vec()))
}

fn get<'a>(set: &'a [(&'static str, OsString)], name: &str) -> Option<&'a OsString> {
    set.iter().find(|(c, _)| *c == name).map(|(_, v)| v)
}

fn is_true(set: &[(&'static str, OsString)], name: &str) -> bool {
    get(set, name).is_some_and(|v| v == "true")
}

/// Parse runc's argv (without argv[0]) the way runc does. Never fails: what runc would reject is
/// recorded in [`Invocation::unreadable`] for a `create`/`run`, and ignored for anything else (the
/// runtime reports it).
pub fn parse_invocation(args: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let (global, rest) = match go_parse(GLOBAL, args) {
        Ok(p) => p,
        Err(e) => {
            // runc stops here; but if a flag this table lacks is one a newer runc knows, runc would go
            // on to the subcommand, so a call that names create or run anywhere is not passed on.
            inv.subcommand = args
                .iter()
                .find(|a| *a == "create" || *a == "run")
                .map(|a| a.to_string_lossy().into_owned());
            inv.unreadable = Some(e);
            return inv;
        }
    };
    inv.root = get(&global, "root").map(PathBuf::from);
    inv.log = get(&global, "log").map(PathBuf::from);
    inv.log_format = get(&global, "log-format").map(|v| v.to_string_lossy().into_owned());
    inv.prints_only = is_true(&global, "help") || is_true(&global, "version");
    let Some(sub) = rest.first() else {
        return inv;
    };
    inv.subcommand = Some(sub.to_string_lossy().into_owned());
    if sub.as_bytes() == b"delete" && !inv.prints_only {
        inv.id = delete_id(&rest[1..]);
        return inv;
    }
    if !inv.creates() {
        return inv;
    }
    let table: Vec<Flag> = match sub.as_bytes() {
        b"run" => CREATE.iter().chain(RUN_ONLY).copied().collect(),
        _ => CREATE.to_vec(),
    };
    let (flags, positional) = match go_parse(&table, &reorder(&table, &rest[1..])) {
        Ok(p) => p,
        Err(e) => {
            inv.unreadable = Some(e);
            return inv;
        }
    };
    if is_true(&flags, "help") {
        inv.prints_only = true;
        return inv;
    }
    inv.bundle = get(&flags, "bundle").map(PathBuf::from);
    inv.pid_file = get(&flags, "pid-file")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match positional.as_slice() {
        [id] if !id.is_empty() => match id.to_str() {
            Some(id) => inv.id = Some(id.to_string()),
            None => inv.unreadable = Some(format!("container id {id:?} is not UTF-8")),
        },
        [_] => inv.unreadable = Some("the container id is empty".into()),
        other => {
            inv.unreadable = Some(format!(
                "\"{}\" requires exactly 1 argument (the container id), got {}",
                sub.to_string_lossy(),
                other.len()
            ))
        }
    }
    inv
}

/// The container id of `runc delete ARGS` as runc reads it; `None` for anything runc would refuse
/// or only print help for (the shim then hands the call over untouched and runc reports it).
fn delete_id(args: &[OsString]) -> Option<String> {
    let (flags, positional) = go_parse(DELETE, &reorder(DELETE, args)).ok()?;
    if is_true(&flags, "help") {
        return None;
    }
    match positional.as_slice() {
        [id] if !id.is_empty() => id.to_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    /// Every form below was run against runc 1.1.5 with a missing bundle: `chdir B` names the bundle
    /// runc took, `Incorrect Usage` (or a flag error) is what it rejected.
    #[test]
    fn bundle_and_id_as_runc_reads_them() {
        let ok: &[(&str, &str, &str)] = &[
            ("create ID --bundle /b1", "/b1", "ID"),
            ("create --bundle /b2 ID", "/b2", "ID"),
            ("create ID -b /b3", "/b3", "ID"),
            ("create ID --bundle=/b4", "/b4", "ID"),
            ("create ID --no-pivot --bundle /b6", "/b6", "ID"),
            ("create --pid-file /tmp/p ID --bundle /b7", "/b7", "ID"),
            ("create ID --pid-file /tmp/p --bundle /b8", "/b8", "ID"),
            ("create --bundle /b10 ID --bundle /b11", "/b11", "ID"),
            ("run ID --bundle /b12", "/b12", "ID"),
            ("create -bundle /b14 ID", "/b14", "ID"),
            ("create --bundle -x ID", "-x", "ID"),
            ("create ID --console-socket /s --bundle /b16", "/b16", "ID"),
            ("create ID --preserve-fds 0 -b /b17", "/b17", "ID"),
            ("create ID --no-pivot=true -b /b19", "/b19", "ID"),
            ("create -b /b20 -- ID", "/b20", "ID"),
            ("create ID --pid-file - -b /bQ", "/bQ", "ID"),
            ("create --help=false -b /bH ID", "/bH", "ID"),
            ("--debug=false create -b /bD ID", "/bD", "ID"),
            ("--root=/r create ID -b /bR", "/bR", "ID"),
            ("create --no-pivot=1 ID -b /bP", "/bP", "ID"),
            ("--systemd-cgroup create ID -b /bS", "/bS", "ID"),
            ("run ID -d -b /bRD", "/bRD", "ID"),
            ("-- run -b /bX ID", "/bX", "ID"),
            ("create ID --preserve-fds 0x2 -b /bI", "/bI", "ID"),
        ];
        for (call, bundle, id) in ok {
            let inv = parse_invocation(&args(call));
            assert_eq!(inv.unreadable, None, "{call}");
            assert!(inv.creates(), "{call}");
            assert_eq!(inv.bundle.as_deref(), Some(Path::new(bundle)), "{call}");
            assert_eq!(inv.id.as_deref(), Some(*id), "{call}");
        }
    }

    #[test]
    fn what_runc_rejects_is_unreadable_and_never_handed_over() {
        for (call, why) in [
            ("create --no-pivot ID --bundle /b5", "exactly 1 argument"),
            ("create ID -- --bundle /b9", "exactly 1 argument"),
            ("run --detach ID -b /b13", "exactly 1 argument"),
            ("create ID X --bundle /b15", "exactly 1 argument"),
            ("create --no-new-keyring ID -b=/b18", "exactly 1 argument"),
            ("create -b /x --bundle /y ID", "two forms"),
            ("create ID --preserve-fds x -b /b", "invalid value"),
            ("create ID -b", "exactly 1 argument"),
            ("create ID --zz -b /x", "exactly 1 argument"),
            ("create ID -d -b /x", "exactly 1 argument"),
            ("create --frobnicate ID", "not defined: -frobnicate"),
            ("create ---b /x ID", "bad flag syntax"),
            ("create --no-pivot=maybe ID", "invalid boolean"),
            ("create --bundle /b", "exactly 1 argument"),
            ("create", "exactly 1 argument"),
            ("--frobnicate create -b /x ID", "not defined"),
            ("--root", "needs an argument"),
        ] {
            let inv = parse_invocation(&args(call));
            let got = inv.unreadable.clone().unwrap_or_default();
            assert!(got.contains(why), "{call}: {got:?}");
            if call != "--root" {
                assert!(inv.creates(), "{call}");
                assert!(!inv.hands_over_untouched(), "{call}");
            }
        }
        // An empty id is runc's error too.
        let inv = parse_invocation(&[OsString::from("create"), OsString::new()]);
        assert!(inv.unreadable.unwrap().contains("empty"));
    }

    #[test]
    fn help_and_version_create_nothing() {
        for call in [
            "create --help -b /x ID",
            "create -h",
            "run --help",
            "-v create -b /x ID",
            "--version run ID",
            "--help create ID",
        ] {
            let inv = parse_invocation(&args(call));
            assert!(!inv.creates(), "{call}");
            assert!(inv.hands_over_untouched(), "{call}");
        }
    }

    #[test]
    fn global_flags_and_other_subcommands() {
        let inv = parse_invocation(&args(
            "--root /var/run/docker/runtime-runc/moby --log /run/x/log.json --log-format json --systemd-cgroup create --bundle /run/b --pid-file /run/b/init.pid --console-socket /tmp/s abc123",
        ));
        assert_eq!(inv.subcommand.as_deref(), Some("create"));
        assert_eq!(
            inv.root.as_deref(),
            Some(Path::new("/var/run/docker/runtime-runc/moby"))
        );
        assert_eq!(inv.log.as_deref(), Some(Path::new("/run/x/log.json")));
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert_eq!(inv.bundle.as_deref(), Some(Path::new("/run/b")));
        assert_eq!(inv.id.as_deref(), Some("abc123"));
        assert_eq!(inv.pid_file.as_deref(), Some(Path::new("/run/b/init.pid")));
        assert_eq!(
            parse_invocation(&args("create --pid-file= -b /b c")).pid_file,
            None
        );
        // delete: the id as runc reads it (flags before or after it), nothing when runc refuses.
        for (call, id) in [
            ("--root /r delete abc", Some("abc")),
            ("delete --force abc", Some("abc")),
            ("delete abc -f", Some("abc")),
            ("delete -f=false abc", Some("abc")),
            ("delete", None),
            ("delete a b", None),
            ("delete --frobnicate a", None),
            ("delete --help a", None),
            ("--version delete a", None),
        ] {
            assert_eq!(parse_invocation(&args(call)).id.as_deref(), id, "{call}");
        }
        // A value flag takes the next word even when it looks like a flag (Go's flag package).
        let inv = parse_invocation(&args("--log --debug create -b /b c"));
        assert_eq!(inv.log.as_deref(), Some(Path::new("--debug")));
        assert_eq!(inv.id.as_deref(), Some("c"));
        for a in [
            "features",
            "--root /r start abc",
            "delete --force abc",
            "state abc",
            "",
        ] {
            let inv = parse_invocation(&args(a));
            assert!(!inv.creates(), "{a}");
            assert!(inv.hands_over_untouched(), "{a}");
        }
        // Flags after a subcommand that is not create/run are the runtime's business.
        assert!(parse_invocation(&args("delete --frobnicate x")).hands_over_untouched());
        // No --bundle, or an empty one: the current directory, as runc.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(parse_invocation(&args("create x")).bundle_dir(), cwd);
        let inv = parse_invocation(&args("create --bundle= x"));
        assert_eq!(inv.bundle.as_deref(), Some(Path::new("")));
        assert_eq!(inv.bundle_dir(), cwd);
        assert_eq!(
            parse_invocation(&args("create -b rel x")).bundle_dir(),
            cwd.join("rel")
        );
    }

    #[test]
    fn bundles_that_are_not_utf8_are_kept_byte_for_byte() {
        let raw = OsStr::from_bytes(b"/b\xff").to_os_string();
        let inv = parse_invocation(&["run".into(), "ID".into(), "--bundle".into(), raw.clone()]);
        assert_eq!(inv.bundle.as_deref(), Some(Path::new(&raw)));
    }
}
