//! The documented exit codes and the trait an error implements to name its own; a leaf, it names nothing of the crate and prints nothing.
//!
//! Each module maps its own errors (`impl ExitCodeOf` beside the error type); the walk down an
//! error chain happens at the edge (`commands::exit_codes`), so no arrow points up from here.

/// Success.
pub const OK: i32 = 0;
/// The operation failed (driver error, engine error, I/O).
pub const FAILED: i32 = 1;
/// Bad input or usage: unknown profile, bad spec, bad GPU index, unusable state dir, bad config,
/// and a request the config's policy refuses (the message names the config key).
pub const USAGE: i32 = 2;
/// No room for the profile right now (retry later, or use --wait).
pub const NO_ROOM: i32 = 3;
/// The operation needs privilege migrun does not have (not root, NVML NO_PERMISSION, another user's lease).
pub const PRIVILEGE: i32 = 4;

/// Errors that know their exit code.
pub trait ExitCodeOf {
    fn exit_code(&self) -> i32;
}
