//! Handlers for `hook` and `runtime`.

use super::{not_yet, Ctx};
use crate::cli::{HookArgs, RuntimeArgs};
use anyhow::Result;

pub fn hook(_ctx: &Ctx, _a: &HookArgs) -> Result<i32> {
    not_yet("migrun hook")
}
pub fn runtime(_ctx: &Ctx, _a: RuntimeArgs) -> Result<i32> {
    not_yet("migrun runtime")
}
