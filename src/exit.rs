//! Documented exit codes and the mapping from error types to them; it must not print anything.

use crate::gpu::GpuError;

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

impl ExitCodeOf for crate::out::OutError {
    fn exit_code(&self) -> i32 {
        crate::out::OutError::exit_code(self)
    }
}

impl ExitCodeOf for GpuError {
    fn exit_code(&self) -> i32 {
        match self {
            GpuError::NoSuchGpu { .. } | GpuError::Sim(_) => USAGE,
            GpuError::NoPermission { .. } => PRIVILEGE,
            _ => FAILED,
        }
    }
}

macro_rules! usage_errors {
    ($($t:ty),*) => {$(
        impl ExitCodeOf for $t {
            fn exit_code(&self) -> i32 { USAGE }
        }
    )*};
}
usage_errors!(
    crate::profile::ProfileError,
    crate::gpu::sim::SpecError,
    crate::gpu::sim::models::ModelError,
    crate::commands::InputError
);

impl ExitCodeOf for crate::statedir::StateDirError {
    /// A state dir or file to fix is bad input; an I/O failure after the start (a full or read-only file
    /// system) is the operation failing, not the caller's mistake.
    fn exit_code(&self) -> i32 {
        if self.is_io() {
            FAILED
        } else {
            USAGE
        }
    }
}

/// The exit code for an error chain: the first error in the chain that knows its code decides.
pub fn code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        macro_rules! try_type {
            ($($t:ty),*) => {$(
                if let Some(e) = cause.downcast_ref::<$t>() {
                    return e.exit_code();
                }
            )*};
        }
        try_type!(
            crate::out::OutError,
            GpuError,
            crate::profile::ProfileError,
            crate::gpu::sim::SpecError,
            crate::gpu::sim::models::ModelError,
            crate::statedir::StateDirError,
            crate::commands::InputError
        );
        for hook in EXTRA.iter() {
            if let Some(code) = hook(cause) {
                return code;
            }
        }
    }
    FAILED
}

/// Per-module mappers for error types defined outside this file (lease, alloc, config, engines).
/// Each returns `Some(code)` when it recognises the error.
type Mapper = fn(&(dyn std::error::Error + 'static)) -> Option<i32>;
static EXTRA: &[Mapper] = &[
    crate::lease::exit_code_of,
    crate::alloc::exit_code_of,
    crate::config::exit_code_of,
    crate::engine::exit_code_of,
    crate::migmode::exit_code_of,
    crate::caller::exit_code_of,
];
