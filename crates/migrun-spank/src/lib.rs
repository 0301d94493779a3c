//! migrun's Slurm SPANK plugin (`migrun_spank.so`, loaded from plugstack.conf): `srun|sbatch|salloc --mig=PROFILE`
//! gives each job step a MIG slice made for it on each of its nodes, and gives it back when the step ends. This file
//! owns only the crate layout and the export to Slurm's loader; it must not hold logic.
//!
//! The work is in [`plugin`] (the callbacks) and [`request`] (pure option and output handling); docs/slurm.md says
//! how to install it and what happens on each path.
#![deny(unsafe_code)]

mod ffi;
pub mod plugin;
pub mod request;
