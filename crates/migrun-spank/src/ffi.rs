//! The one place with `unsafe`: the `slurm-spank` crate's `Plugin` trait is `unsafe` to implement, and its
//! `SPANK_PLUGIN!` macro exports the C symbols Slurm's loader looks for. It must not hold logic (see `plugin`).
#![allow(unsafe_code)]

use crate::plugin::MigrunSpank;
use slurm_spank::{spank_log, LogLevel, Plugin, SpankHandle, SPANK_PLUGIN};
use std::error::Error;

// SAFETY: the trait is unsafe because task callbacks run in processes slurmstepd forked from itself, where a
// multi-threaded plugin could deadlock on a lock held by a thread that did not survive the fork. The task callback
// here (`task_init`) only returns a line; the threads `plugin::run` starts to read migrun's pipes are
// joined before its callback returns, so no thread of ours is alive at any fork.
unsafe impl Plugin for MigrunSpank {
    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        MigrunSpank::init(self, spank)
    }
    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        MigrunSpank::init_post_opt(self, spank)
    }
    fn task_init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        MigrunSpank::task_init(self, spank)
    }
    fn task_exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        MigrunSpank::task_exit(self, spank)
    }
    fn exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        MigrunSpank::exit(self, spank)
    }
    /// Slurm's own logger, plain: in srun/sbatch it prints `srun: error: …`, in slurmstepd it goes to slurmd's log.
    fn report_error(&self, error: &dyn Error) {
        spank_log(LogLevel::Error, &error.to_string());
    }
    /// No tracing subscriber: everything goes through `spank_log`.
    fn setup(&self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }
}

// The plugin_version Slurm's loader checks: major and minor must match the running Slurm (22.05 on Debian 12); the
// micro number is not compared. The macro takes a literal only, so a test checks it against the spank.h it was
// built with.
SPANK_PLUGIN!(b"migrun", 0x16_05_00, MigrunSpank);

#[cfg(test)]
mod tests {
    #[test]
    fn built_for_the_slurm_release_of_its_headers() {
        let v = slurm_spank::spank_sys::SLURM_VERSION_NUMBER;
        assert_eq!(v >> 8, super::plugin_version >> 8, "spank.h is Slurm {v:#x}; set SLURM_22_05 and the SPANK_PLUGIN! version to its major.minor");
    }
}
