//! Applies placement plans through the hardware trait, rolls back, releases and collects garbage; it must not parse engine formats.

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(_e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    None
}
