//! The lease registry in the state dir: lock, intent journal, atomic lease records, holder liveness; it must not call NVML.

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(_e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    None
}
