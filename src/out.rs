//! Standard output and standard error for every command: writes that never panic; it must not decide what to print.
//!
//! `println!` panics when stdout is a pipe whose reader went away (`migrun status | head -1`),
//! and `eprintln!` does the same on a closed stderr, which would kill the launcher while it holds
//! a lease. Every command prints through [`outln!`]/[`out!`] instead: a closed pipe becomes the
//! typed error [`OutError::ClosedPipe`], which travels up like any other error, so a command that
//! must undo something (an `alloc` whose caller never learned its lease) can, and `main` then exits
//! quietly with [`CLOSED_PIPE_EXIT`]. Messages for stderr go through [`errln!`], which drops what
//! cannot be written: a diagnostic nobody can read is not worth dying for.

use std::fmt;
use std::io::{self, Write};

/// The exit status after stdout's reader went away: 128 + SIGPIPE, what a shell reports for `ls`
/// or `git` cut off the same way (`cmd | head` under `set -o pipefail` sees the same number).
pub const CLOSED_PIPE_EXIT: i32 = 141;

#[derive(Debug, thiserror::Error)]
pub enum OutError {
    /// The reader of stdout is gone; nothing more can be said, and nothing is printed about it.
    #[error("standard output was closed by its reader")]
    ClosedPipe,
    /// Any other write failure (a full disk behind `> file`): that one is worth a message.
    #[error("cannot write to standard output: {0}")]
    Io(io::Error),
}

impl crate::exit::ExitCodeOf for OutError {
    fn exit_code(&self) -> i32 {
        match self {
            OutError::ClosedPipe => CLOSED_PIPE_EXIT,
            OutError::Io(_) => crate::exit::FAILED,
        }
    }
}

fn classify(e: io::Error) -> OutError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        OutError::ClosedPipe
    } else {
        OutError::Io(e)
    }
}

/// Write formatted text to stdout and flush it, so a closed pipe is seen here and not at exit.
pub fn write_out(args: fmt::Arguments<'_>) -> Result<(), OutError> {
    let mut w = io::stdout().lock();
    w.write_fmt(args).map_err(classify)?;
    w.flush().map_err(classify)
}

/// Write bytes made elsewhere (completions, the man page) to stdout.
pub fn write_bytes(bytes: &[u8]) -> Result<(), OutError> {
    let mut w = io::stdout().lock();
    w.write_all(bytes).map_err(classify)?;
    w.flush().map_err(classify)
}

/// Write a line to stderr, dropping it if stderr is closed or full.
pub fn write_err(args: fmt::Arguments<'_>) {
    let mut w = io::stderr().lock();
    let _ = w.write_fmt(args);
    let _ = w.write_all(b"\n");
}

/// `println!` that returns `Err(OutError)` from the enclosing function instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write_out(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::out::write_out(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// `print!` that returns `Err(OutError)` from the enclosing function instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write_out(format_args!($($arg)*))? };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::write_err(format_args!($($arg)*)) };
}

/// The exit code for an error chain that ends in a closed stdout, if it does.
pub fn closed_pipe_in(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| matches!(c.downcast_ref::<OutError>(), Some(OutError::ClosedPipe)))
}
