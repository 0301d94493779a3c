//! `--env-file`s read once, and read as docker reads them: the launcher checks the bytes it read and hands docker a
//! private copy of exactly those bytes, so a file rewritten after the check, or a FIFO that answers each reader
//! differently, cannot slip a device variable past it.
//!
//! docker's reader (the CLI's `opts/envfile.go`, 20.10 to 28, checked against both CLIs): lines end at `\n`, and one
//! `\r` before it (or at the end of the file) is dropped (Go's `bufio.ScanLines`); a UTF-8 BOM is dropped from the
//! first line only; leading Unicode blanks are trimmed; empty lines and `#` lines are skipped; the name runs to the
//! first `=` and may not hold a space or tab; a bare `NAME` copies the CLI's own environment, and the value is kept
//! as written. A file that is not UTF-8 is refused by docker, and here.

use super::DockerError;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest env file migrun reads (docker reads any size; nobody needs a megabyte of variables).
pub const MAX_BYTES: u64 = 1 << 20;

/// One variable an env file sets: its 1-based line and its name as docker will use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub line: usize,
    pub name: String,
}

/// What a non-regular file is, for the refusal.
fn kind(m: &std::fs::Metadata) -> Option<&'static str> {
    let t = m.file_type();
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a plain file")
    }
}

/// Read `path` once: a regular file of at most [`MAX_BYTES`], else refused. The path is looked at before it is opened
/// (opening a FIFO blocks until someone writes, and opening a device can act), and what was opened is looked at again,
/// since the path may have been swapped in between; the open never blocks (`O_NONBLOCK`).
pub fn read_once(path: &Path) -> Result<Vec<u8>, DockerError> {
    let io = |source| DockerError::EnvFile {
        path: path.into(),
        source,
    };
    let refuse = |m: &std::fs::Metadata| match kind(m) {
        Some(kind) => Err(DockerError::EnvFileKind {
            path: path.into(),
            kind,
        }),
        None if m.len() > MAX_BYTES => Err(DockerError::EnvFileTooBig {
            path: path.into(),
            size: m.len(),
        }),
        None => Ok(()),
    };
    refuse(&std::fs::metadata(path).map_err(io)?)?;
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(io)?;
    refuse(&file.metadata().map_err(io)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(DockerError::EnvFileTooBig {
            path: path.into(),
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// The variables an env file sets, by docker's rules (module doc). `Err((line, why))` where docker refuses the file.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, (usize, String)> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last newline there is a line only if something follows it.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::new();
    for (i, raw) in lines.into_iter().enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = match i {
            0 => raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw),
            _ => raw,
        };
        let text = std::str::from_utf8(raw).map_err(|_| (n, "it is not UTF-8".to_string()))?;
        // str::trim_start trims Unicode White_Space, the set Go's unicode.IsSpace tests.
        let line = text.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split('=').next().unwrap_or("");
        if name.is_empty() {
            return Err((n, "no variable name before `=`".into()));
        }
        if name.contains([' ', '\t']) {
            return Err((n, format!("variable {name:?} contains a blank")));
        }
        out.push(Entry {
            line: n,
            name: name.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(bytes: &[u8]) -> Vec<String> {
        parse(bytes).unwrap().into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn lines_are_read_as_dockers_cli_reads_them() {
        // Each case was run through docker 20.10's and 28's CLI (`docker run --env-file`), and the names are the
        // ones they sent to the daemon (bare names whose variable is set in the CLI's environment).
        let table: &[(&[u8], &[&str])] = &[
            (
                b"A=1\r\nNVIDIA_VISIBLE_DEVICES\r",
                &["A", "NVIDIA_VISIBLE_DEVICES"],
            ),
            (
                b"  B=2 \r\n\tC\r\n#X=1\nD=x\r\r\nE= y\n",
                &["B", "C", "D", "E"],
            ),
            (b"\xef\xbb\xbfF=1\n", &["F"]),
            (b"X=1\n\xef\xbb\xbfG=1\n", &["X", "\u{feff}G"]),
            (b"\x0bH=x\n\xc2\xa0I=x\n", &["H", "I"]),
            (b"J\r\r\n", &["J\r"]),
            (b"K\rL=1\n\n\n", &["K\rL"]),
            (b"\x00M=1", &["\u{0}M"]),
            (b"", &[]),
            (b"\n\r\n# only comments\n", &[]),
        ];
        for (bytes, want) in table {
            assert_eq!(names(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(parse(b"A=1\n\n=x\n").unwrap_err().0, 3);
        assert_eq!(parse(b"A B=1\n").unwrap_err().0, 1);
        assert_eq!(parse(b"NV\xff=1\n").unwrap_err().0, 1);
        assert_eq!(parse(b"A=1\nB\t=2\n").unwrap_err().0, 2);
    }

    #[test]
    fn only_regular_files_are_read_and_never_block() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_once(&fifo).unwrap_err();
        assert!(
            matches!(e, DockerError::EnvFileKind { kind: "a FIFO", .. }),
            "{e}"
        );
        let e = read_once(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        assert!(matches!(
            read_once(d.path()).unwrap_err(),
            DockerError::EnvFileKind { .. }
        ));
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_once(&big).unwrap_err(),
            DockerError::EnvFileTooBig { .. }
        ));
        let ok = d.path().join("ok");
        std::fs::write(&ok, "A=1\n").unwrap();
        assert_eq!(read_once(&ok).unwrap(), b"A=1\n");
        assert!(matches!(
            read_once(&d.path().join("missing")).unwrap_err(),
            DockerError::EnvFile { .. }
        ));
    }
}
