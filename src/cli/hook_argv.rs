//! The hook fast path of the command line: `migrun hook <stage>` with nothing else, read without clap; it must not accept anything the clap definitions in `cli` would read differently.

use super::{Cli, Command, GlobalArgs, HookArgs, HookStage};
use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variables behind [`GlobalArgs`]' flags, in field order (a test keeps them in step
/// with the clap definitions).
pub(super) const GLOBAL_ENV: [&str; 3] = ["MIGRUN_SIMULATE", "MIGRUN_STATE_DIR", "MIGRUN_CONFIG"];

/// `migrun hook <stage>` exactly as hooks.d entries and runc hooks write it: argv is those two words
/// and the globals come from the environment alone. A hook is a fresh process per container start,
/// and clap's parse (building the command, matching, validating) was a tenth of a hook's own
/// instructions and pulled clap's code into memory (docs/benchmarks.md, run M). `None` for anything
/// else, and for what clap would refuse or treat specially (an empty or non-UTF-8 value), so every
/// other argv, help and every error still go through [`Cli`] and read the same.
pub(super) fn parse_hook(args: &[OsString]) -> Option<Cli> {
    let [_, word, stage] = args else {
        return None;
    };
    if word != "hook" {
        return None;
    }
    let stage = match stage.to_str()? {
        "precreate" => HookStage::Precreate,
        "prestart" => HookStage::Prestart,
        "createRuntime" | "create-runtime" => HookStage::CreateRuntime,
        "poststop" => HookStage::Poststop,
        _ => return None,
    };
    Some(Cli {
        global: globals_from_env(|name| std::env::var_os(name))?,
        command: Command::Hook(HookArgs { stage }),
    })
}

/// [`GlobalArgs`] as clap fills them from [`GLOBAL_ENV`] when no flag is given; `None` when a value
/// is set but empty (clap refuses an empty path) or, for `--simulate`, not UTF-8 (clap refuses it).
pub(super) fn globals_from_env(var: impl Fn(&str) -> Option<OsString>) -> Option<GlobalArgs> {
    let [simulate, state_dir, config] = GLOBAL_ENV.map(&var);
    if [&simulate, &state_dir, &config]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| v.is_empty()))
    {
        return None;
    }
    let simulate = match simulate {
        Some(v) => Some(v.into_string().ok()?),
        None => None,
    };
    Some(GlobalArgs {
        simulate,
        state_dir: state_dir.map(PathBuf::from),
        config: config.map(PathBuf::from),
        verbose: 0,
    })
}
