//! Handler for the launcher (`migrun [run] ... IMAGE [CMD...]`).

use super::{not_yet, Ctx};
use crate::cli::RunArgs;
use anyhow::Result;

pub fn run(_ctx: &Ctx, _a: RunArgs) -> Result<i32> {
    not_yet("the docker launcher")
}
