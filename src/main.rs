//! The `migrun` binary: parse the command line, call the library, print the error chain, exit with a documented code.
//!
//! Invoked as `migrun-runtime` (a symlink or copy), it is the runc-compatible shim.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if migrun::engine::runtime::invoked_as_shim(args.first()) {
        // Calls that need nothing from migrun go straight to the next runtime (returns otherwise).
        migrun::engine::runtime::hand_over_untouched(&args[1..]);
        // `--` keeps runc's own flags (`-v`, `--help`) away from migrun's global ones.
        args.splice(1..1, ["runtime".into(), "--".into()]);
    }
    let cli = match migrun::cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                migrun::exit::USAGE
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    match migrun::run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("migrun: {err:#}");
            ExitCode::from(migrun::exit::code_for(&err) as u8)
        }
    }
}
