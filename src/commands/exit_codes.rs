//! The exit code of an error chain: the first error in it that knows its code decides; it must not print, and it is the only place that knows every error type.
//!
//! Deciding at the edge keeps the arrows pointing down: each module implements
//! `exit::ExitCodeOf` (or an `exit_code_of` mapper) for its own errors, and only this file, in
//! the top room, names them all.

use crate::exit::{ExitCodeOf, FAILED};

/// Mappers of modules whose errors are several types behind one function.
type Mapper = fn(&(dyn std::error::Error + 'static)) -> Option<i32>;
const MAPPERS: &[Mapper] = &[
    crate::lease::exit_code_of,
    crate::alloc::exit_code_of,
    crate::config::exit_code_of,
    crate::engine::exit_code_of,
    crate::migmode::exit_code_of,
    crate::caller::exit_code_of,
    crate::cdi::exit_code_of,
];

/// The documented exit code for `err` (1 when nothing in the chain knows better).
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
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
            crate::gpu::GpuError,
            crate::profile::ProfileError,
            crate::gpu::sim::SpecError,
            crate::gpu::sim::models::ModelError,
            crate::statedir::StateDirError,
            super::InputError,
            super::session::SessionError,
            super::cdi::LeaseSpecError,
            crate::ops::usage::SinceError,
            crate::lease::ledger::LedgerError
        );
        for mapper in MAPPERS {
            if let Some(code) = mapper(cause) {
                return code;
            }
        }
    }
    FAILED
}
