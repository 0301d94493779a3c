//! Handlers for `alloc`, `release` and `gc`.

use super::{not_yet, Ctx};
use crate::cli::{AllocArgs, GcArgs, ReleaseArgs};
use anyhow::Result;

pub fn alloc(_ctx: &Ctx, _a: &AllocArgs) -> Result<i32> {
    not_yet("migrun alloc")
}
pub fn release(_ctx: &Ctx, _a: &ReleaseArgs) -> Result<i32> {
    not_yet("migrun release")
}
pub fn gc(_ctx: &Ctx, _a: &GcArgs) -> Result<i32> {
    not_yet("migrun gc")
}
