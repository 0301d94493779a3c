//! The runc-compatible shim: rewrite the bundle on `create`, exec the next runtime; it must not change other subcommands.

use std::ffi::OsString;
use std::path::Path;

/// True when the binary was started as `migrun-runtime` (argv[0] switch).
pub fn invoked_as_shim(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name().map(|f| f.to_owned()))
        .is_some_and(|f| f == "migrun-runtime")
}
