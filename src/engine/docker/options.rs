//! `docker run`'s options as docker reads them: which take a value (so migrun finds IMAGE), and the split of a command
//! line into options, IMAGE and command; what is refused is `check`'s business.

use super::DockerError;
use std::path::PathBuf;

/// docker run's options that take a value (docker 28 `docker run --help`, plus hidden and Windows-only ones,
/// which docker still parses). Knowing them is how migrun finds the IMAGE: docker's parser (pflag) stops at
/// the first word that is neither an option nor an option's value.
const VALUE_OPTIONS: &[&str] = &[
    "add-host",
    "annotation",
    "attach",
    "blkio-weight",
    "blkio-weight-device",
    "cap-add",
    "cap-drop",
    "cgroup-parent",
    "cgroupns",
    "cidfile",
    "cpu-count",
    "cpu-percent",
    "cpu-period",
    "cpu-quota",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpu-shares",
    "cpus",
    "cpuset-cpus",
    "cpuset-mems",
    "credentialspec",
    "detach-keys",
    "device",
    "device-cgroup-rule",
    "device-read-bps",
    "device-read-iops",
    "device-write-bps",
    "device-write-iops",
    "dns",
    "dns-option",
    "dns-search",
    "domainname",
    "entrypoint",
    "env",
    "env-file",
    "expose",
    "gpus",
    "group-add",
    "health-cmd",
    "health-interval",
    "health-retries",
    "health-start-interval",
    "health-start-period",
    "health-timeout",
    "hostname",
    "io-maxbandwidth",
    "io-maxiops",
    "ip",
    "ip6",
    "ipc",
    "isolation",
    "kernel-memory",
    "label",
    "label-file",
    "link",
    "link-local-ip",
    "log-driver",
    "log-opt",
    "mac-address",
    "memory",
    "memory-reservation",
    "memory-swap",
    "memory-swappiness",
    "mount",
    "name",
    "network",
    "network-alias",
    "oom-score-adj",
    "pid",
    "pids-limit",
    "platform",
    "publish",
    "pull",
    "restart",
    "runtime",
    "security-opt",
    "shm-size",
    "stop-signal",
    "stop-timeout",
    "storage-opt",
    "sysctl",
    "tmpfs",
    "ulimit",
    "user",
    "userns",
    "uts",
    "volume",
    "volume-driver",
    "volumes-from",
    "workdir",
];

/// docker run's switches (no value, or `--switch=false`).
const BOOL_OPTIONS: &[&str] = &[
    "detach",
    "disable-content-trust",
    "help",
    "init",
    "interactive",
    "no-healthcheck",
    "oom-kill-disable",
    "privileged",
    "publish-all",
    "quiet",
    "read-only",
    "rm",
    "sig-proxy",
    "tty",
    "use-api-socket",
];

/// Short forms.
const SHORT_OPTIONS: &[(char, &str)] = &[
    ('a', "attach"),
    ('c', "cpu-shares"),
    ('d', "detach"),
    ('e', "env"),
    ('h', "hostname"),
    ('i', "interactive"),
    ('l', "label"),
    ('m', "memory"),
    ('p', "publish"),
    ('P', "publish-all"),
    ('q', "quiet"),
    ('t', "tty"),
    ('u', "user"),
    ('v', "volume"),
    ('w', "workdir"),
];

/// Old spellings docker still accepts.
const ALIASES: &[(&str, &str)] = &[
    ("net", "network"),
    ("net-alias", "network-alias"),
    ("dns-opt", "dns-option"),
];

fn canonical(long: &str) -> &str {
    ALIASES
        .iter()
        .find(|(a, _)| *a == long)
        .map_or(long, |(_, c)| c)
}

/// Is `--name` (without dashes) one of docker run's long options? The command line uses it so a
/// near miss of migrun's own flags is suggested only when docker would not take it (`--pid` is
/// docker's, `--proflie` is nobody's).
pub fn is_docker_option(name: &str) -> bool {
    let c = canonical(name);
    VALUE_OPTIONS.contains(&c) || BOOL_OPTIONS.contains(&c)
}

/// How docker run reads an option, as migrun's table has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// Takes a value (`--env X`, `--env=X`).
    Value,
    /// A switch (`--rm`, `--rm=false`).
    Switch,
}

/// The kind of docker run's long option `long` (without dashes; old spellings are read as docker reads
/// them), or `None` when the table lacks it. tests/engines_matrix.rs checks the table against each
/// installed CLI's `docker run --help` with this.
pub fn option_kind(long: &str) -> Option<OptionKind> {
    let c = canonical(long);
    if VALUE_OPTIONS.contains(&c) {
        Some(OptionKind::Value)
    } else if BOOL_OPTIONS.contains(&c) {
        Some(OptionKind::Switch)
    } else {
        None
    }
}

/// The long option a short form (`-e`) stands for, or `None` when the table has no such short form.
pub fn short_option(c: char) -> Option<&'static str> {
    SHORT_OPTIONS.iter().find(|(s, _)| *s == c).map(|(_, l)| *l)
}

/// pflag's boolean spellings (Go's strconv.ParseBool).
pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// One docker option as given: canonical long name and its value (`None` for a bare switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOpt {
    pub name: String,
    pub value: Option<String>,
    /// How the user wrote it (for messages), e.g. `-e` or `--env`.
    pub spelled: String,
    /// The index in [`RunLine::words`] of the word that ends with the value (or holds the switch): a value is always
    /// the tail of one word (`--env-file=F`, `-eX=1`, or the next word), which is how [`RunLine::with_value`]
    /// replaces it.
    pub word: usize,
}

/// A `docker run` line split the way docker splits it: options, IMAGE, command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLine {
    /// The option words exactly as given, before IMAGE (passed through unchanged).
    pub words: Vec<String>,
    /// The options those words hold.
    pub opts: Vec<DockerOpt>,
    pub image: String,
    pub command: Vec<String>,
    /// The user ended the options with `--`.
    dashdash: bool,
}

impl RunLine {
    /// Split docker's part of the command line (everything after migrun's own flags).
    pub fn parse(args: &[String]) -> Result<RunLine, DockerError> {
        let mut opts = Vec::new();
        let mut i = 0;
        let mut dashdash = false;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                dashdash = true;
                i += 1;
                break;
            }
            if let Some(body) = a.strip_prefix("--") {
                let (name, inline) = match body.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (body, None),
                };
                let name = canonical(name);
                if BOOL_OPTIONS.contains(&name) {
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: inline,
                        spelled: format!("--{name}"),
                        word: i,
                    });
                } else if VALUE_OPTIONS.contains(&name) {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            i += 1;
                            args.get(i)
                                .cloned()
                                .ok_or_else(|| DockerError::MissingValue { option: a.clone() })?
                        }
                    };
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: Some(value),
                        spelled: format!("--{name}"),
                        word: i,
                    });
                } else if let Some(v) = inline {
                    // Unknown, but unambiguous: its value is attached. Pass it through for docker to judge.
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: Some(v),
                        spelled: format!("--{name}"),
                        word: i,
                    });
                } else {
                    return Err(DockerError::UnknownOption { option: a.clone() });
                }
                i += 1;
                continue;
            }
            if a.len() > 1 && a.starts_with('-') {
                // A group of short options (`-it`, `-dp 80:80`, `-eX=1`): switches until one takes a value,
                // which is the rest of the word or, when nothing is left, the next word (pflag's rules).
                let chars: Vec<char> = a[1..].chars().collect();
                let mut k = 0;
                while k < chars.len() {
                    let c = chars[k];
                    let Some((_, long)) = SHORT_OPTIONS.iter().find(|(s, _)| *s == c) else {
                        return Err(DockerError::UnknownOption {
                            option: format!("-{c}"),
                        });
                    };
                    let rest: String = chars[k + 1..].iter().collect();
                    if BOOL_OPTIONS.contains(long) {
                        if let Some(v) = rest.strip_prefix('=') {
                            opts.push(DockerOpt {
                                name: (*long).into(),
                                value: Some(v.into()),
                                spelled: format!("-{c}"),
                                word: i,
                            });
                            break;
                        }
                        opts.push(DockerOpt {
                            name: (*long).into(),
                            value: None,
                            spelled: format!("-{c}"),
                            word: i,
                        });
                        k += 1;
                        continue;
                    }
                    let value = if !rest.is_empty() {
                        rest.strip_prefix('=').unwrap_or(&rest).to_string()
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| DockerError::MissingValue {
                                option: format!("-{c}"),
                            })?
                    };
                    opts.push(DockerOpt {
                        name: (*long).into(),
                        value: Some(value),
                        spelled: format!("-{c}"),
                        word: i,
                    });
                    break;
                }
                i += 1;
                continue;
            }
            break;
        }
        let words_end = if dashdash { i - 1 } else { i };
        let Some(image) = args.get(i).cloned() else {
            return Err(DockerError::NoImage);
        };
        Ok(RunLine {
            words: args[..words_end].to_vec(),
            opts,
            image,
            command: args[i + 1..].to_vec(),
            dashdash,
        })
    }

    /// Values of every occurrence of option `name` (canonical long name).
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_string();
        self.opts
            .iter()
            .filter(move |o| o.name == name)
            .filter_map(|o| o.value.as_deref())
    }

    /// The last value of `name` (docker keeps the last one of a single-valued option).
    pub fn last(&self, name: &str) -> Option<&str> {
        self.values(name).last()
    }

    /// Is switch `name` on? A bare switch is on; `--name=false` turns it off again.
    pub fn switch(&self, name: &str) -> bool {
        self.opts.iter().rfind(|o| o.name == name).is_some_and(|o| {
            o.value
                .as_deref()
                .is_none_or(|v| parse_bool(v) == Some(true))
        })
    }

    /// `-d` / `--detach`.
    pub fn detach(&self) -> bool {
        self.switch("detach")
    }

    /// The user's own `--cidfile`, if any.
    pub fn cidfile(&self) -> Option<&str> {
        self.last("cidfile")
    }

    /// A user's `--cidfile` must not exist yet: docker refuses it, and its old content would name another container.
    pub fn check_cidfile(&self) -> Result<(), DockerError> {
        match self.cidfile() {
            Some(p) if std::fs::symlink_metadata(p).is_ok() => {
                Err(DockerError::CidfileExists(PathBuf::from(p)))
            }
            _ => Ok(()),
        }
    }

    /// The same line with option `opt`'s value (an index into [`RunLine::opts`]) replaced by `value`, in the option
    /// and in the word that holds it; `None` when `opt` has no value.
    pub fn with_value(&self, opt: usize, value: &str) -> Option<RunLine> {
        let mut line = self.clone();
        let o = line.opts.get_mut(opt)?;
        let old = o.value.replace(value.to_string())?;
        let word = line.words.get_mut(o.word)?;
        let head = word.strip_suffix(old.as_str())?.to_string();
        *word = head + value;
        Some(line)
    }

    /// `docker run` argv: the user's options unchanged, then migrun's (last, so they win), then IMAGE and CMD.
    pub fn argv(&self, ours: &[String]) -> Vec<String> {
        let mut v = Vec::with_capacity(self.words.len() + ours.len() + self.command.len() + 3);
        v.push("run".to_string());
        v.extend(self.words.iter().cloned());
        v.extend(ours.iter().cloned());
        if self.dashdash {
            v.push("--".into());
        }
        v.push(self.image.clone());
        v.extend(self.command.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> RunLine {
        RunLine::parse(&words(s)).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_table_answers_kind_and_short_form_queries() {
        assert_eq!(option_kind("env"), Some(OptionKind::Value));
        assert_eq!(option_kind("rm"), Some(OptionKind::Switch));
        // Old spellings are read as docker reads them.
        assert_eq!(option_kind("net"), Some(OptionKind::Value));
        assert_eq!(option_kind("nosuch"), None);
        assert_eq!(short_option('e'), Some("env"));
        assert_eq!(short_option('P'), Some("publish-all"));
        assert_eq!(short_option('z'), None);
    }

    #[test]
    fn finds_the_image_after_options_with_values() {
        let table: &[(&str, &str, &[&str])] = &[
            ("busybox", "busybox", &[]),
            ("-it --rm busybox sh", "busybox", &["sh"]),
            ("-e X=1 -v /a:/b --name n img", "img", &[]),
            (
                "--env=X=1 --shm-size 1g img -c true",
                "img",
                &["-c", "true"],
            ),
            ("-dp 8080:80 img", "img", &[]),
            ("-itd img", "img", &[]),
            ("-eX=1 img", "img", &[]),
            ("-e=X=1 img", "img", &[]),
            ("--rm=false --sig-proxy=false img", "img", &[]),
            ("-d=true img", "img", &[]),
            ("--net host --dns-opt x img", "img", &[]),
            ("-h myhost -w /tmp img pwd", "img", &["pwd"]),
            ("-e -it img", "img", &[]),
            ("--rm -- img -it", "img", &["-it"]),
            ("--new-thing=3 img", "img", &[]),
            ("img --rm -e X", "img", &["--rm", "-e", "X"]),
        ];
        for (line, image, cmd) in table {
            let r = parse(line);
            assert_eq!(&r.image, image, "{line}");
            assert_eq!(r.command, cmd.to_vec(), "{line}");
            assert_eq!(r.argv(&[])[1..].join(" "), line.to_string(), "{line}");
        }
        assert!(parse("-itd img").detach());
        assert!(!parse("-d=false img").detach());
        assert!(parse("--detach img").detach());
        assert!(!parse("-it img").detach());
        assert_eq!(
            parse("-e -it img").values("env").collect::<Vec<_>>(),
            ["-it"]
        );
        assert_eq!(parse("--cidfile /x img").cidfile(), Some("/x"));
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("cid");
        let line = parse(&format!("--cidfile {} img", old.display()));
        assert!(line.check_cidfile().is_ok());
        std::fs::write(&old, "0123456789ab").unwrap();
        assert!(matches!(
            line.check_cidfile(),
            Err(DockerError::CidfileExists(_))
        ));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let err = |s: &str| RunLine::parse(&words(s)).unwrap_err().to_string();
        assert!(err("--rm").contains("no IMAGE"));
        assert!(err("").contains("no IMAGE"));
        assert!(err("--name").contains("--name needs a value"));
        assert!(err("-it -e").contains("-e needs a value"));
        let e = err("--frobnicate img");
        assert!(e.contains("--frobnicate=VALUE"), "{e}");
        assert!(err("-Z img").contains("-Z"));
    }
}
