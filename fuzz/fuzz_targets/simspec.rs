//! Fuzz target: `--simulate` specs (`gpu::sim::SimSpec` FromStr/Display, `SimMachine::new`); it must not do I/O.
//!
//! Properties: parsing never panics; a parsed spec's Display re-parses to the same spec (the spec is
//! stored in the simulator's state file and compared on reopen); a machine built from a parsed spec
//! has exactly the GPUs the spec counts, never more than MAX_SIM_GPUS, and reading it back never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::gpu::sim::machine::MAX_SIM_GPUS;
use migrun::gpu::sim::{SimMachine, SimSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<SimSpec>() {
        Ok(spec) => {
            let shown = spec.to_string();
            let again: SimSpec = shown.parse().unwrap_or_else(|e| {
                panic!("{s:?} parsed, but its Display {shown:?} does not: {e}")
            });
            assert_eq!(again, spec, "{s:?} -> {shown:?} re-parses differently");
            let machine = SimMachine::new(&spec);
            let want: u64 = spec.entries.iter().map(|e| e.count as u64).sum();
            assert_eq!(machine.gpus.len() as u64, want);
            assert!(
                machine.gpus.len() <= MAX_SIM_GPUS as usize,
                "{s:?} made {} GPUs",
                machine.gpus.len()
            );
            let infos = machine.gpu_infos();
            assert_eq!(infos.len(), machine.gpus.len());
            for g in 0..machine.gpus.len() as u32 {
                machine
                    .model(g)
                    .expect("a parsed spec names only known models");
                let _ = machine.profiles(g);
                let _ = machine.instances(g);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains(['\n', '\r']),
                "error for {s:?} is not one line: {msg:?}"
            );
        }
    }
});
