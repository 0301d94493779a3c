//! In-process tests of allocate/release/gc over the simulator.
