//! Handlers for `mig enable|disable` and `teardown`.

use super::{not_yet, Ctx};
use crate::cli::{MigArgs, TeardownArgs};
use anyhow::Result;

pub fn mig(_ctx: &Ctx, _a: &MigArgs) -> Result<i32> {
    not_yet("migrun mig")
}
pub fn teardown(_ctx: &Ctx, _a: &TeardownArgs) -> Result<i32> {
    not_yet("migrun teardown")
}
