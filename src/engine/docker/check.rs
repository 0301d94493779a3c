//! What the launcher refuses among `docker run`'s options: every way a container could choose or reach a GPU itself
//! (device variables, `--gpus`, CDI and node `--device`s, bind mounts of NVIDIA nodes or of the `/dev` holding them,
//! `--privileged`, `--device-cgroup-rule`), and options that conflict with the injection mode.
//!
//! Host paths are judged by `hostpath` (text, symlinks, device numbers), never by their spelling alone: docker hands
//! the daemon the string as written, and the kernel resolves it.

use super::options::parse_bool;
use super::{envfile, hostpath};
use super::{DockerError, RunLine, DEVICE_ENV};
use crate::config::InjectMode;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The bind-mount sources of a container `--volumes-from` names (a parameter, so the check runs without a daemon in
/// unit tests); `Err` says why they could not be learnt.
pub type BindsOf<'a> = &'a dyn Fn(&str) -> Result<Vec<String>, String>;

/// What the check read that docker must get exactly as read: each `--env-file`'s bytes, by option index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    env_files: Vec<(usize, Vec<u8>)>,
}

impl Checked {
    /// `line` with every `--env-file` pointing at a private copy (0600, in `dir`, which must be private too) of the
    /// bytes that were checked. Copies rather than `-e NAME=VALUE` options: values stay off docker's command line,
    /// which every user can read in /proc, and docker parses the very bytes migrun parsed.
    pub fn hand_over(&self, line: &RunLine, dir: &Path) -> Result<RunLine, DockerError> {
        let mut line = line.clone();
        for (n, (opt, bytes)) in self.env_files.iter().enumerate() {
            let given = PathBuf::from(line.opts[*opt].value.clone().unwrap_or_default());
            let copy = dir.join(format!("env-file-{}", n + 1));
            let io = |source| DockerError::EnvFileCopy {
                path: given.clone(),
                source,
            };
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)
                .and_then(|mut f| f.write_all(bytes))
                .map_err(io)?;
            line = line
                .with_value(*opt, &copy.display().to_string())
                .ok_or_else(|| io(std::io::Error::other("the option has no value to replace")))?;
        }
        Ok(line)
    }
}

impl RunLine {
    /// Refuse what would let the container pick or reach a GPU itself, and options that conflict with `mode`.
    /// Env files are read here, once; [`Checked::hand_over`] gives docker what was read. `binds_of` tells what
    /// another container mounts (`--volumes-from`).
    pub fn check(&self, mode: InjectMode, binds_of: BindsOf) -> Result<Checked, DockerError> {
        let mut checked = Checked::default();
        let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let majors = hostpath::nvidia_majors();
        let reach = |given: String, path: &str, base: &Path, walk: bool| match hostpath::reach(
            path, base, &majors, walk,
        ) {
            Some(why) => Err(DockerError::DeviceReach { given, why }),
            None => Ok(()),
        };
        for (index, o) in self.opts.iter().enumerate() {
            let v = o.value.as_deref().unwrap_or("");
            let given = || format!("{} {v}", o.spelled);
            match o.name.as_str() {
                "help" => {
                    return Err(DockerError::Help {
                        option: o.spelled.clone(),
                    })
                }
                "gpus" => return Err(DockerError::DeviceChoice { given: given() }),
                "env" => {
                    if let Some(var) = device_env_name(v) {
                        return Err(DockerError::DeviceChoice {
                            given: format!("{} {var}", o.spelled),
                        });
                    }
                }
                "env-file" => {
                    let bytes = envfile::read_once(Path::new(v))?;
                    let entries =
                        envfile::parse(&bytes).map_err(|(line, why)| DockerError::EnvFileLine {
                            path: v.into(),
                            line,
                            why,
                        })?;
                    for e in entries {
                        if let Some(var) = device_env_name(&e.name) {
                            return Err(DockerError::DeviceChoice {
                                given: format!("{var} in --env-file {v} (line {})", e.line),
                            });
                        }
                    }
                    checked.env_files.push((index, bytes));
                }
                "device" => {
                    if is_cdi_gpu(v) {
                        return Err(DockerError::DeviceChoice { given: given() });
                    }
                    // docker resolves a relative host path from the daemon's directory (/ under systemd), and
                    // migrun cannot know it for sure: check it from / and from here.
                    let host = v.split(':').next().unwrap_or("");
                    reach(given(), host, Path::new("/"), true)?;
                    reach(given(), host, &here, true)?;
                }
                "volume" => {
                    if let Some(src) = volume_source(v) {
                        reach(given(), src, &here, false)?;
                    }
                }
                "mount" => {
                    let m = MountSpec::parse(v).map_err(|why| DockerError::BadMount {
                        given: given(),
                        why,
                    })?;
                    for src in m.host_paths() {
                        reach(given(), src, &here, false)?;
                    }
                }
                "volumes-from" => {
                    let container = v.split(':').next().unwrap_or(v);
                    let binds = binds_of(container).map_err(|why| DockerError::VolumesFrom {
                        container: container.into(),
                        why,
                    })?;
                    for src in binds {
                        reach(format!("{} {v} (it mounts {src})", o.spelled), &src, Path::new("/"), false)?;
                    }
                }
                "privileged" if o.value.as_deref().and_then(parse_bool) != Some(false) => {
                    return Err(DockerError::DeviceReach {
                        given: o.spelled.clone(),
                        why: "it gives the container every host device, every GPU and MIG slice included".into(),
                    })
                }
                "device-cgroup-rule" => {
                    return Err(DockerError::DeviceReach {
                        given: given(),
                        why: "it lets the container open device nodes migrun did not give it, NVIDIA's among them"
                            .into(),
                    })
                }
                "runtime" if mode == InjectMode::NvidiaRuntime && v != "nvidia" => {
                    return Err(DockerError::RuntimeConflict { given: v.into() })
                }
                _ => {}
            }
        }
        Ok(checked)
    }
}

/// The device-choosing variable an `-e` value / env-file line sets, if any (`NAME=V`, or bare `NAME` which copies
/// the host's). The name is compared with blanks and control characters trimmed off both ends: docker keeps such a
/// name as written, so trimming can only refuse more, never let a device variable through.
pub(super) fn device_env_name(entry: &str) -> Option<&'static str> {
    let name = entry.split('=').next().unwrap_or("");
    let name = name.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    DEVICE_ENV.iter().copied().find(|v| *v == name)
}

/// A `--device` value that asks CDI for an NVIDIA device (`nvidia.com/gpu=…`, `nvidia.com/mig=…`) or for a slice of
/// migrun's (`migrun.io/mig=<lease>`, which would take another lease's slice); the vendor in any case, since only
/// migrun's injection may name one.
fn is_cdi_gpu(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    v.starts_with("nvidia.com/") || v.starts_with("migrun.io/")
}

/// The host side of a `-v`/`--volume` value, when it is a host path: `SRC:DST[:MODE]` with SRC absolute or starting
/// with `.` (docker's CLI makes `./x` absolute from its own directory, which is migrun's). A named volume has no host
/// path of its own (one made with a device option comes from `--mount ...,volume-opt=device=…`, checked there, or
/// from `docker volume create`, which needs docker access already).
fn volume_source(v: &str) -> Option<&str> {
    let (src, _) = v.split_once(':')?;
    (src.starts_with('/') || src.starts_with('.')).then_some(src)
}

/// One `--mount` value, read the way docker reads it: one CSV record of `key=value` fields, keys in any case.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountSpec {
    /// Every `source=` / `src=` given (docker keeps the last; all are checked).
    sources: Vec<String>,
    /// `volume-opt=device=…` values: the local volume driver binds that host path when `o=bind`.
    volume_devices: Vec<String>,
}

impl MountSpec {
    fn parse(v: &str) -> Result<MountSpec, String> {
        let mut m = MountSpec::default();
        for field in csv_fields(v)? {
            let (key, value) = field.split_once('=').unwrap_or((&field, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => m.sources.push(value.trim().to_string()),
                "volume-opt" => {
                    if let Some((k, dev)) = value.split_once('=') {
                        if k.trim() == "device" {
                            m.volume_devices.push(dev.trim().to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// The host paths the mount may bind: every source that is a path, and every volume device that is one.
    fn host_paths(&self) -> impl Iterator<Item = &str> {
        self.sources
            .iter()
            .chain(&self.volume_devices)
            .map(String::as_str)
            .filter(|s| s.starts_with('/') || s.starts_with('.'))
    }
}

/// The fields of a one-line CSV record as Go's encoding/csv reads them (docker parses `--mount` so): `"…"` quotes a
/// field, `""` inside is a quote. A value spanning lines is refused rather than read like docker (which takes the
/// first record only), and so is a stray quote (docker refuses it too).
fn csv_fields(v: &str) -> Result<Vec<String>, String> {
    if v.contains(['\n', '\r']) {
        return Err("it spans more than one line".into());
    }
    let mut fields = Vec::new();
    let mut chars = v.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quote is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text follows a closing quote".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RunLine {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        RunLine::parse(&words).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn no_daemon(_: &str) -> Result<Vec<String>, String> {
        Err("no daemon in unit tests".into())
    }

    fn check(line: &str) -> Result<Checked, DockerError> {
        parse(line).check(InjectMode::Env, &no_daemon)
    }

    #[test]
    fn refuses_every_way_of_choosing_a_gpu() {
        let refused = [
            "-e NVIDIA_VISIBLE_DEVICES=all img",
            "--env NVIDIA_VISIBLE_DEVICES=0 img",
            "--env=NVIDIA_VISIBLE_DEVICES img",
            "-eNVIDIA_MIG_CONFIG_DEVICES=all img",
            "-e NVIDIA_MIG_MONITOR_DEVICES=all img",
            "--gpus all img",
            "--gpus=device=0 img",
            "--device nvidia.com/gpu=0 img",
            "--device=nvidia.com/gpu=all img",
            "--device nvidia.com/mig=0:1 img",
            "--device NVIDIA.COM/gpu=0 img",
            "--device migrun.io/mig=7 img",
            "--device=Migrun.IO/mig=MIG-5f1d img",
        ];
        for line in refused {
            let e = check(line).unwrap_err();
            assert!(matches!(e, DockerError::DeviceChoice { .. }), "{line}: {e}");
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            assert!(e.to_string().contains("cannot choose its own GPU"), "{e}");
        }
        let allowed = [
            "-e CUDA_VISIBLE_DEVICES=0 img",
            "-e NVIDIA_DRIVER_CAPABILITIES=all img",
            "--device /dev/fuse img",
            "--device /dev/null:/dev/x:rw img",
            "img -e NVIDIA_VISIBLE_DEVICES=all",
            "--runtime nvidia img",
            "--privileged=false img",
            "-v /tmp:/data -v named:/x -v /anonymous img",
            "--mount type=bind,src=/tmp,dst=/x --mount type=tmpfs,dst=/t img",
            "--mount type=volume,src=v,dst=/x,volume-opt=type=tmpfs,volume-opt=device=tmpfs img",
        ];
        for line in allowed {
            check(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn refuses_device_nodes_however_they_are_spelled() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("x");
        std::os::unix::fs::symlink("/dev/nvidia0", &link).unwrap();
        let devlink = d.path().join("d");
        std::os::unix::fs::symlink("/dev", &devlink).unwrap();
        let (link, devlink) = (link.display(), devlink.display());
        let refused = [
            "--device /dev/nvidia0 img".to_string(),
            "--device /dev/nvidia-caps/nvidia-cap12:/dev/x img".into(),
            "--device /dev/./nvidia0 img".into(),
            "--device //dev/nvidia0 img".into(),
            "--device=/dev/../dev/nvidia0:/dev/nvidia0:rwm img".into(),
            "--device /dev/ img".into(),
            "--device / img".into(),
            format!("--device {link} img"),
            format!("--device {devlink} img"),
            "-v /dev:/dev img".into(),
            "-v /dev/nvidia-caps:/x img".into(),
            "--volume=/:/host:ro img".into(),
            "-v /dev/nvidia0:/dev/nvidia0 img".into(),
            format!("-v {devlink}/:/x img"),
            format!("-v {link}:/y img"),
            "--mount type=bind,src=/dev/nvidia0,dst=/x img".into(),
            "--mount type=bind,source=/dev/nvidia-caps,target=/x img".into(),
            "--mount Type=bind,SOURCE=/dev/./nvidia1,dst=/x img".into(),
            r#"--mount type=bind,"src=/dev",dst=/x img"#.into(),
            format!("--mount type=bind,src={devlink},dst=/x img"),
            "--mount type=volume,dst=/x,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/dev img"
                .into(),
            "--privileged img".into(),
            "--privileged=true img".into(),
            "--device-cgroup-rule=c_195:*_rwm img".into(),
        ];
        for line in &refused {
            let e = check(line).unwrap_err();
            assert!(matches!(e, DockerError::DeviceReach { .. }), "{line}: {e}");
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            let msg = e.to_string();
            let opt = line.split([' ', '=']).next().unwrap();
            assert!(msg.starts_with(&format!("refusing {opt}")), "{line}: {msg}");
            assert!(msg.contains("cannot choose its own GPU"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn volumes_from_is_judged_by_what_the_other_container_mounts() {
        let binds = |c: &str| -> Result<Vec<String>, String> {
            match c {
                "devs" => Ok(vec!["/srv".into(), "/dev".into()]),
                "data" => Ok(vec!["/srv".into()]),
                _ => Err("No such container".into()),
            }
        };
        let c = |l: &str| parse(l).check(InjectMode::Env, &binds);
        let e = c("--volumes-from devs:ro img").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("refusing --volumes-from devs:ro (it mounts /dev)"),
            "{e}"
        );
        assert!(c("--volumes-from data img").is_ok());
        let e = c("--volumes-from gone img").unwrap_err();
        assert!(matches!(e, DockerError::VolumesFrom { .. }), "{e}");
    }

    #[test]
    fn mount_values_are_read_as_docker_reads_them() {
        let m = |v: &str| MountSpec::parse(v);
        assert_eq!(
            m(r#"type=bind,"source=/a,b",dst=/x"#).unwrap().sources,
            ["/a,b"]
        );
        assert_eq!(m(r#""src=/q""x",dst=/y"#).unwrap().sources, [r#"/q"x"#]);
        assert!(m(r#"src="/dev",dst=/x"#).is_err(), "a bare quote");
        assert!(m("src=/dev\n,dst=/x").is_err());
        assert!(m(r#""src=/dev"x"#).is_err());
        assert!(m(r#""src=/dev"#).is_err());
    }

    #[test]
    fn env_files_are_checked_once_and_docker_gets_what_was_checked() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8]| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let bad = file(
            "bad",
            b"# NVIDIA_VISIBLE_DEVICES=x\nA=1\n  NVIDIA_VISIBLE_DEVICES=all\n",
        );
        let bare = file("bare", b"\xef\xbb\xbfNVIDIA_MIG_CONFIG_DEVICES\n");
        let cr = file("cr", b"A=1\r\nNVIDIA_VISIBLE_DEVICES\r");
        let ok = file(
            "ok",
            b"# NVIDIA_VISIBLE_DEVICES=all\r\nA=NVIDIA_VISIBLE_DEVICES=1\r\n",
        );
        for (f, line) in [(&bad, 3), (&bare, 1), (&cr, 2)] {
            let e = check(&format!("--env-file {f} img")).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("in --env-file {f} (line {line})")),
                "{e}"
            );
        }
        let e = check(&format!(
            "--env-file {} img",
            d.path().join("missing").display()
        ))
        .unwrap_err();
        assert!(matches!(e, DockerError::EnvFile { .. }), "{e}");
        let e = check(&format!("--env-file={} img", file("blank", b"A B=1\n"))).unwrap_err();
        assert!(matches!(e, DockerError::EnvFileLine { line: 1, .. }), "{e}");

        // What docker gets: a private copy of the bytes that were checked, whatever the file says later.
        let line = parse(&format!("--rm --env-file={ok} -e X=1 --env-file {ok} img"));
        let checked = line.check(InjectMode::Env, &no_daemon).unwrap();
        std::fs::write(&ok, "NVIDIA_VISIBLE_DEVICES=all\n").unwrap();
        let private = tempfile::tempdir().unwrap();
        let handed = checked.hand_over(&line, private.path()).unwrap();
        let copies: Vec<&str> = handed.values("env-file").collect();
        assert_eq!(copies.len(), 2);
        for c in &copies {
            assert!(c.starts_with(&private.path().display().to_string()), "{c}");
            assert_eq!(
                std::fs::read(c).unwrap(),
                b"# NVIDIA_VISIBLE_DEVICES=all\r\nA=NVIDIA_VISIBLE_DEVICES=1\r\n"
            );
            let mode = std::fs::metadata(c).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        }
        assert_eq!(handed.words[1], format!("--env-file={}", copies[0]));
        assert_eq!(handed.words[5], copies[1]);
        assert_eq!(handed.words[2..5], ["-e", "X=1", "--env-file"]);
    }

    #[test]
    fn help_and_runtime_conflicts() {
        let e = check("-it --help img").unwrap_err();
        assert!(matches!(e, DockerError::Help { .. }));
        let c = |l: &str, mode| parse(l).check(mode, &no_daemon);
        let e = c("--runtime runc img", InjectMode::NvidiaRuntime).unwrap_err();
        assert!(matches!(e, DockerError::RuntimeConflict { .. }));
        assert!(c("--runtime nvidia img", InjectMode::NvidiaRuntime).is_ok());
        assert!(c("--runtime runc img", InjectMode::Env).is_ok());
    }

    #[test]
    fn device_variables_are_found_under_blanks_and_control_characters() {
        for e in [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES\r",
            " NVIDIA_VISIBLE_DEVICES=1",
            "\u{0}NVIDIA_MIG_CONFIG_DEVICES=all",
            "NVIDIA_MIG_MONITOR_DEVICES\u{b}=x",
        ] {
            assert!(device_env_name(e).is_some(), "{e:?}");
        }
        assert!(device_env_name("NVIDIA_VISIBLE_DEVICESX=1").is_none());
        assert!(device_env_name("A=NVIDIA_VISIBLE_DEVICES").is_none());
    }
}
