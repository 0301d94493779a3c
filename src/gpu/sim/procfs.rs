//! The NVIDIA driver's /proc files for a simulated machine (mig-minors, /proc/devices, each GPU's `information`), modelled on the H200 capture, and the host facts read from them; pure, it must not touch the real /proc.
//!
//! A simulated slice gets a CDI spec like a real one, so the simulator needs the same device
//! numbering a driver would give. It writes the files as the driver does and reads them back with
//! the real parsers ([`HostFacts::from_texts`]), so the simulator and the NVML backend on the fake
//! library (which reads these files laid out under `MIGRUN_HOST_ROOT`) share every number.

use super::SimMachine;
use crate::gpu::hostfacts::{HostFacts, HostFactsError, GPUS_DIR, MIG_MINORS, PROC_DEVICES};
use std::fmt::Write;
use std::path::Path;

/// The `nvidia-caps` char major of the H200 capture (tests/fixtures/h200-141gb-caps/proc-devices.txt).
pub const CAPS_MAJOR: u32 = 241;
/// The `nvidia-uvm` char major of the same capture.
pub const UVM_MAJOR: u32 = 238;
/// The driver lists capability minors for this many GPUs whether or not they exist (the capture,
/// from a one-GPU host, numbers gpu0..gpu31).
const DRIVER_GPUS: u32 = 32;
/// GPU instances (gi0..gi14) and compute instances (ci0..ci7) per GPU in the driver's numbering.
const GIS: u32 = 15;
const CIS: u32 = 8;

/// `/proc/driver/nvidia-caps/mig-minors` for `gpus` GPUs (at least the driver's 32): `config 1`,
/// `monitor 2`, then per GPU, per GI, the GI's `access` followed by its CIs', numbered on. For 32
/// GPUs this is the capture's file byte for byte (a unit test checks).
pub fn mig_minors(gpus: u32) -> String {
    let mut out = String::from("config 1\nmonitor 2\n");
    let mut minor = 3;
    for gpu in 0..gpus.max(DRIVER_GPUS) {
        for gi in 0..GIS {
            let _ = writeln!(out, "gpu{gpu}/gi{gi}/access {minor}");
            minor += 1;
            for ci in 0..CIS {
                let _ = writeln!(out, "gpu{gpu}/gi{gi}/ci{ci}/access {minor}");
                minor += 1;
            }
        }
    }
    out
}

/// The NVIDIA lines of `/proc/devices`, with the capture's majors.
pub fn proc_devices() -> String {
    format!(
        "Character devices:\n  1 mem\n195 nvidia\n195 nvidiactl\n{UVM_MAJOR} nvidia-uvm\n{CAPS_MAJOR} nvidia-caps\n\nBlock devices:\n  7 loop\n"
    )
}

/// A simulated GPU's PCI bus id (the directory name under /proc/driver/nvidia/gpus).
pub fn bus_id(index: u32) -> String {
    format!("0000:{:02x}:00.0", index + 1)
}

/// A GPU's `information` file in the capture's layout; its device minor is its index, as the
/// driver numbers GPUs it probes in order.
pub fn information(model: &str, uuid: &str, index: u32) -> String {
    format!(
        "Model: \t\t {model}\nIRQ:   \t\t 41\nGPU UUID: \t {uuid}\nBus Type: \t PCIe\nBus Location: \t {}\nDevice Minor: \t {index}\nGPU Excluded:\t No\n",
        bus_id(index)
    )
}

/// Every file of the simulated driver as (path relative to the host root, content): what a test lays
/// out under `MIGRUN_HOST_ROOT` for the NVML backend on the fake library.
pub fn files(machine: &SimMachine) -> Vec<(String, String)> {
    let mut out = vec![
        (
            MIG_MINORS.to_string(),
            mig_minors(machine.gpus.len() as u32),
        ),
        (PROC_DEVICES.to_string(), proc_devices()),
    ];
    for g in &machine.gpus {
        out.push((
            format!("{GPUS_DIR}/{}/information", bus_id(g.index)),
            information(&g.model, &g.uuid, g.index),
        ));
    }
    out
}

/// The host facts of the simulated machine, parsed from [`files`] as the real ones are.
pub fn host_facts(machine: &SimMachine) -> Result<HostFacts, HostFactsError> {
    let infos: Vec<String> = machine
        .gpus
        .iter()
        .map(|g| information(&g.model, &g.uuid, g.index))
        .collect();
    let label = |rel: &str| Path::new("<simulated>/").join(rel);
    HostFacts::from_texts(
        &mig_minors(machine.gpus.len() as u32),
        &proc_devices(),
        &infos,
        (&label(MIG_MINORS), &label(PROC_DEVICES)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::hostfacts::parse_char_majors;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/h200-141gb-caps"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
    }

    #[test]
    fn mig_minors_are_the_capture_s_byte_for_byte() {
        assert_eq!(mig_minors(1), fixture("mig-minors.txt"));
        // More GPUs than the driver's 32 continue the numbering.
        let m = crate::gpu::hostfacts::parse_mig_minors(&mig_minors(33)).unwrap();
        assert_eq!(m.gi_access(32, 0), Some(4323));
        assert_eq!(m.ci_access(32, 14, 7), Some(4322 + 135));
    }

    #[test]
    fn majors_are_the_capture_s() {
        let real = parse_char_majors(&fixture("proc-devices.txt"));
        let sim = parse_char_majors(&proc_devices());
        for name in ["nvidia", "nvidiactl", "nvidia-uvm", "nvidia-caps"] {
            assert_eq!(sim.get(name), real.get(name), "{name}");
        }
    }

    #[test]
    fn facts_of_a_simulated_machine() {
        let m = SimMachine::new(&"h100-80gb:2".parse().unwrap());
        let f = host_facts(&m).unwrap();
        assert_eq!((f.caps_major, f.uvm_major), (241, 238));
        for g in &m.gpus {
            assert_eq!(f.gpu_minor(&g.uuid), Some(g.index), "{}", g.uuid);
        }
        // GI 1 / CI 0 of the second GPU: 3 + 135 + 9, and the CI right after it.
        assert_eq!(f.mig_minors.gi_access(1, 1), Some(147));
        assert_eq!(f.mig_minors.ci_access(1, 1, 0), Some(148));
        let files = files(&m);
        assert_eq!(files.len(), 4);
        assert_eq!(
            files[3].0,
            "proc/driver/nvidia/gpus/0000:02:00.0/information"
        );
    }
}
