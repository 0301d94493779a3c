//! The `migrun` binary: parse the command line, call the library, print the error chain, exit with a documented code.
//!
//! Invoked as `migrun-runtime` (a symlink or copy), it is the runc-compatible shim.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if migrun::engine::runtime::invoked_as_shim(args.first()) {
        // Calls that need nothing from migrun go straight to the next runtime (returns otherwise).
        migrun::commands::shim_fast_path(&args[1..]);
        // `--` keeps runc's own flags (`-v`, `--help`) away from migrun's global ones.
        args.splice(1..1, ["runtime".into(), "--".into()]);
    }
    let cli = match migrun::cli::parse(args) {
        Ok(cli) => cli,
        Err(migrun::cli::CliError::Clap(e)) => {
            let code = if e.use_stderr() {
                migrun::exit::USAGE
            } else {
                0
            };
            // clap writes help and errors itself; a closed pipe ends like every other command's.
            if let Err(io) = e.print() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::from(migrun::out::CLOSED_PIPE_EXIT as u8);
                }
            }
            return ExitCode::from(code as u8);
        }
        Err(e) => {
            migrun::errln!("migrun: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match migrun::run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        // A reader that went away gets no message: there is no one left to read it.
        Err(err) if migrun::out::closed_pipe_in(&err) => {
            ExitCode::from(migrun::out::CLOSED_PIPE_EXIT as u8)
        }
        Err(err) => {
            migrun::errln!("migrun: {err:#}");
            ExitCode::from(migrun::commands::exit_code_for(&err) as u8)
        }
    }
}
