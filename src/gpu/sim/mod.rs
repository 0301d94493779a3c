//! The simulated-GPU backend: a [`SimMachine`] kept in a locked state file; it must never be picked without an explicit `--simulate`.
//!
//! Every call loads the machine under an exclusive lock, applies one NVML-like operation and writes
//! it back atomically, so separate migrun processes (launcher, hooks, gc) and the fake
//! `libnvidia-ml.so` see one machine.

pub mod ci;
pub mod latency;
pub mod machine;
pub mod models;
pub mod procfs;

pub use latency::{DriverOp, Latency, LatencyError};
pub use machine::{SimMachine, SimSpec, SpecError};

use super::{
    Backend, CiPlacement, CiProfile, Code, ComputeInstance, GiProfile, GpuError, GpuInfo,
    GpuInstance, GpuState, MigMode, MigState,
};
use crate::statedir::{self, StateDir};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A state-file error as the backend reports it: an I/O failure fails the operation (exit 1); an unsafe or
/// unreadable file is the state dir to fix (exit 2).
fn store_err(e: statedir::StateDirError) -> GpuError {
    if e.is_io() {
        GpuError::SimIo(e.to_string())
    } else {
        GpuError::Sim(e.to_string())
    }
}

/// File name of the simulator state inside the state dir.
pub const SIM_FILE: &str = "sim.json";

/// A simulator state file plus its lock file, shared by the backend and the fake NVML library.
#[derive(Debug, Clone)]
pub struct SimStore {
    path: PathBuf,
    lock: PathBuf,
    /// The machine as last read or written by this process, with the identity of the file it came from.
    cache: Arc<Mutex<Option<(FileId, SimMachine)>>>,
    /// A store for read-only commands: never writes the machine, and never creates the state file
    /// or its lock (a missing file reads as a fresh machine from the spec).
    read_only: bool,
}

/// Which version of the state file a cached machine is: every write is a rename of a new file, so a new
/// version always has a new inode; size and mtime guard against a hand edit in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

impl SimStore {
    pub fn new(path: impl Into<PathBuf>) -> SimStore {
        let path: PathBuf = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        SimStore {
            path,
            lock: lock.into(),
            cache: Arc::default(),
            read_only: false,
        }
    }

    /// A store that only reads (see the `read_only` field).
    pub fn new_read_only(path: impl Into<PathBuf>) -> SimStore {
        SimStore {
            read_only: true,
            ..SimStore::new(path)
        }
    }

    fn cached(&self) -> MutexGuard<'_, Option<(FileId, SimMachine)>> {
        // The cache is plain data and always whole; a panic elsewhere cannot leave it half-written.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the machine under the lock. The file is created from `spec` when missing, and a
    /// different spec is refused. The machine is written back only when `f` succeeds and changed it.
    pub fn update<R>(
        &self,
        spec: &SimSpec,
        f: impl FnOnce(&mut SimMachine) -> R,
    ) -> Result<R, GpuError> {
        if self.read_only {
            return self.read(spec, f);
        }
        let _lock = statedir::lock_file(&self.lock).map_err(store_err)?;
        let (mut machine, fresh) = self.load(spec)?;
        let before = machine.clone();
        let out = f(&mut machine);
        // A fresh machine is written at once, so the state dir is bound to this spec from its first use.
        if fresh || machine != before {
            let json = serde_json::to_vec_pretty(&machine).expect("simulator state serialises");
            *self.cached() = None;
            statedir::write_atomic(&self.path, &json, 0o600).map_err(store_err)?;
            if let Some(id) = FileId::of(&self.path) {
                *self.cached() = Some((id, machine));
            }
        }
        Ok(out)
    }

    /// [`SimStore::update`] for a read-only store: the lock is taken only when the file exists
    /// (so the reader never sees a half-made machine), and a change is refused, not saved.
    fn read<R>(&self, spec: &SimSpec, f: impl FnOnce(&mut SimMachine) -> R) -> Result<R, GpuError> {
        let _lock = if self.path.exists() {
            Some(statedir::lock_file(&self.lock).map_err(store_err)?)
        } else {
            None
        };
        let (mut machine, _) = self.load(spec)?;
        let before = machine.clone();
        let out = f(&mut machine);
        if machine != before {
            return Err(GpuError::Sim(
                "a read-only command tried to change the simulated machine; this is a bug in migrun, please report it".into(),
            ));
        }
        Ok(out)
    }

    /// The stored machine, or a new one from `spec` (then `true`). Called under the lock, so no writer can replace
    /// the file between the look at its identity and the read: a machine cached for the same file is reused, which
    /// spares the fake NVML library a JSON parse on every NVML call of a process.
    fn load(&self, spec: &SimSpec) -> Result<(SimMachine, bool), GpuError> {
        let id = FileId::of(&self.path);
        if let (Some(id), Some((cid, machine))) = (id, self.cached().as_ref()) {
            if *cid == id && &machine.spec == spec {
                return Ok((machine.clone(), false));
            }
        }
        let loaded = self.load_file(spec)?;
        if let (Some(id), (machine, false)) = (id, &loaded) {
            *self.cached() = Some((id, machine.clone()));
        }
        Ok(loaded)
    }

    fn load_file(&self, spec: &SimSpec) -> Result<(SimMachine, bool), GpuError> {
        let Some(bytes) = statedir::read_nofollow(&self.path).map_err(store_err)? else {
            return Ok((SimMachine::new(spec), true));
        };
        let machine: SimMachine = serde_json::from_slice(&bytes).map_err(|e| {
            GpuError::Sim(format!(
                "{} is not a valid simulator state ({e}); remove it to start a fresh simulated machine",
                self.path.display()
            ))
        })?;
        if &machine.spec != spec {
            return Err(GpuError::Sim(format!(
                "{} already simulates {}, not {}; use the same --simulate spec, or start over with `migrun --simulate {} sim reset` (or remove that file)",
                self.path.display(),
                machine.spec,
                spec,
                spec
            )));
        }
        Ok((machine, false))
    }

    /// Forget the simulated machine (the next call starts fresh).
    pub fn reset(&self) -> Result<(), GpuError> {
        let _lock = statedir::lock_file(&self.lock).map_err(store_err)?;
        *self.cached() = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(GpuError::Sim(format!(
                "cannot remove {}: {e}",
                self.path.display()
            ))),
        }
    }
}

/// The `--simulate` backend.
pub struct SimBackend {
    store: SimStore,
    spec: SimSpec,
}

impl SimBackend {
    /// Simulate `spec` with state in `dir`.
    pub fn open(dir: &StateDir, spec: SimSpec) -> Result<SimBackend, GpuError> {
        let backend = SimBackend {
            store: SimStore::new(dir.join(SIM_FILE)),
            spec,
        };
        // Load once so that a mismatching or corrupt state file is reported before anything else; this is the
        // simulated driver's init, and takes as long as the model says.
        backend
            .store
            .update(&backend.spec, |m| m.latency)?
            .wait(DriverOp::Init);
        Ok(backend)
    }

    /// Simulate `spec` for a read-only command: from `dir`'s saved machine when there is one,
    /// else a fresh machine that is never saved.
    /// `state_dir` may not exist yet: then its machine file does not either, and reads as fresh.
    pub fn open_read_only(state_dir: &Path, spec: SimSpec) -> Result<SimBackend, GpuError> {
        let backend = SimBackend {
            store: SimStore::new_read_only(state_dir.join(SIM_FILE)),
            spec,
        };
        backend
            .store
            .update(&backend.spec, |m| m.latency)?
            .wait(DriverOp::Init);
        Ok(backend)
    }

    pub fn store(&self) -> &SimStore {
        &self.store
    }
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// Run a machine operation, turning NVML-like codes into messages that name the GPU.
    fn op<R>(
        &self,
        op: &str,
        gpu: u32,
        f: impl FnOnce(&mut SimMachine) -> Result<R, Code>,
    ) -> Result<R, GpuError> {
        self.timed_op(None, op, gpu, f)
    }

    /// [`SimBackend::op`] for a driver call the latency model times: it sleeps as long as the model says,
    /// after the file lock is released (see [`latency`]).
    fn timed_op<R>(
        &self,
        timed: Option<DriverOp>,
        op: &str,
        gpu: u32,
        f: impl FnOnce(&mut SimMachine) -> Result<R, Code>,
    ) -> Result<R, GpuError> {
        let (count, lat, out) = self.store.update(&self.spec, |m| {
            let count = m.gpus.len() as u32;
            if gpu >= count {
                return (count, m.latency, Err(Code::InvalidArgument));
            }
            (count, m.latency, f(m))
        })?;
        if let Some(d) = timed {
            lat.wait(d);
        }
        if gpu >= count {
            return Err(GpuError::NoSuchGpu { index: gpu, count });
        }
        out.map_err(|code| GpuError::nvml(op, gpu, code))
    }

    /// Direct access to the machine for the `migrun sim` test commands (processes, foreign instances, reset).
    pub fn with_machine<R>(&self, f: impl FnOnce(&mut SimMachine) -> R) -> Result<R, GpuError> {
        self.store.update(&self.spec, f)
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Simulator {
            spec: self.spec.to_string(),
        }
    }
    /// The simulated driver's numbering ([`procfs`]). GPU UUIDs depend on the spec alone, so a fresh
    /// machine of the spec has them: no state file is read.
    fn host_facts(
        &mut self,
    ) -> Result<super::hostfacts::HostFacts, super::hostfacts::HostFactsError> {
        procfs::host_facts(&SimMachine::new(&self.spec))
    }
    fn host_facts_key(&mut self) -> Result<Option<String>, super::hostfacts::HostFactsError> {
        // The simulator's numbering is a function of its spec alone.
        Ok(Some(format!("simulator {}", self.spec)))
    }
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        self.store.update(&self.spec, |m| m.gpu_infos())
    }
    fn profiles(&mut self, gpu: u32) -> Result<Vec<GiProfile>, GpuError> {
        self.op("reading GPU instance profiles", gpu, |m| m.profiles(gpu))
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        self.timed_op(Some(DriverOp::List), "listing GPU instances", gpu, |m| {
            m.instances(gpu)
        })
    }
    fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, GpuError> {
        let res = self.timed_op(
            Some(DriverOp::CreateGi),
            "creating a GPU instance",
            gpu,
            |m| m.create_gi(gpu, profile_id, start),
        );
        match res {
            Err(GpuError::Nvml {
                code: Code::NotSupported,
                ..
            }) => {
                let uuid = self
                    .store
                    .update(&self.spec, |m| m.gpus[gpu as usize].uuid.clone())?;
                Err(GpuError::MigDisabled {
                    gpu: format!("GPU {gpu} ({uuid})"),
                    index: gpu,
                })
            }
            other => other,
        }
    }
    fn create_default_ci(&mut self, gpu: u32, gi: u32) -> Result<ComputeInstance, GpuError> {
        self.timed_op(
            Some(DriverOp::CreateCi),
            "creating the default compute instance",
            gpu,
            |m| m.create_default_ci(gpu, gi),
        )
    }
    fn ci_profiles(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiProfile>, GpuError> {
        self.op("reading compute instance profiles", gpu, |m| {
            m.ci_profiles(gpu, gi)
        })
    }
    fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, GpuError> {
        self.timed_op(
            Some(DriverOp::CreateCi),
            "creating a compute instance",
            gpu,
            |m| m.create_ci(gpu, gi, profile_id, start),
        )
    }
    fn ci_placements(&mut self, gpu: u32, gi: u32) -> Result<Vec<CiPlacement>, GpuError> {
        self.op("listing compute instances", gpu, |m| {
            m.ci_placements(gpu, gi)
        })
    }
    fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), GpuError> {
        self.timed_op(
            Some(DriverOp::DestroyCi),
            "destroying a compute instance",
            gpu,
            |m| m.destroy_ci(gpu, gi, ci),
        )
    }
    fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), GpuError> {
        self.timed_op(
            Some(DriverOp::DestroyGi),
            "destroying a GPU instance",
            gpu,
            |m| m.destroy_gi(gpu, gi),
        )
    }
    fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<MigMode, GpuError> {
        self.timed_op(Some(DriverOp::MigMode), "setting MIG mode", gpu, |m| {
            m.set_mig_mode(gpu, enable)
        })
    }
    fn gpu_processes(&mut self, gpu: u32) -> Result<u32, GpuError> {
        self.op("listing compute processes", gpu, |m| m.gpu_processes(gpu))
    }

    /// One locked read of the state file for the whole machine, instead of the default's one per GPU and call:
    /// every allocation and hook takes a snapshot, and it must also be consistent across GPUs.
    fn snapshot(&mut self) -> Result<MigState, GpuError> {
        let (lat, state) = self
            .store
            .update(&self.spec, |m| (m.latency, Self::read_all(m)))?;
        lat.wait(DriverOp::List);
        state
    }
}

impl SimBackend {
    /// The whole machine as a snapshot (under the store's lock, by [`Backend::snapshot`]).
    fn read_all(m: &SimMachine) -> Result<MigState, GpuError> {
        {
            let mut gpus = Vec::new();
            for info in m.gpu_infos() {
                let i = info.index;
                let fail = |code| GpuError::nvml("reading the simulated GPU", i, code);
                let (profiles, instances) = match info.mig {
                    None => (Vec::new(), Vec::new()),
                    Some(mode) => (
                        m.profiles(i).map_err(fail)?,
                        if mode.current {
                            m.instances(i).map_err(fail)?
                        } else {
                            Vec::new()
                        },
                    ),
                };
                gpus.push(GpuState {
                    info,
                    profiles,
                    instances,
                });
            }
            Ok(MigState { gpus })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trait's per-call snapshot, for comparing with the one-read override.
    fn per_call_snapshot(b: &mut SimBackend) -> MigState {
        let mut gpus = Vec::new();
        for info in b.gpus().unwrap() {
            let profiles = b.profiles(info.index).unwrap();
            let instances = if info.mig.is_some_and(|m| m.current) {
                b.instances(info.index).unwrap()
            } else {
                Vec::new()
            };
            gpus.push(GpuState {
                info,
                profiles,
                instances,
            });
        }
        MigState { gpus }
    }

    #[test]
    fn a_cached_machine_never_hides_another_processs_write() {
        // Two stores on one file stand for two processes: each keeps its own cache.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("sim.json");
        let spec: SimSpec = "h100-80gb:1".parse().unwrap();
        let a = SimStore::new(&path);
        let b = SimStore::new(&path);
        let gi = a.update(&spec, |m| m.create_gi(0, 9, 4)).unwrap().unwrap();
        // b reads the file, then a's cache must notice b's destroy, and b's cache a's next create.
        assert_eq!(
            b.update(&spec, |m| m.instances(0).unwrap().len()).unwrap(),
            1
        );
        b.update(&spec, |m| m.destroy_gi(0, gi)).unwrap().unwrap();
        assert_eq!(
            a.update(&spec, |m| m.instances(0).unwrap().len()).unwrap(),
            0
        );
        a.update(&spec, |m| m.create_gi(0, 19, 0)).unwrap().unwrap();
        assert_eq!(
            b.update(&spec, |m| m.instances(0).unwrap().len()).unwrap(),
            1
        );
        // A file removed behind the cache's back is a fresh machine, not the cached one.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            a.update(&spec, |m| m.instances(0).unwrap().len()).unwrap(),
            0
        );
        // A different spec is still refused when the cache holds the machine.
        let other: SimSpec = "h100-80gb:2".parse().unwrap();
        assert!(a.update(&other, |_| ()).is_err());
    }

    #[test]
    fn the_latency_model_delays_driver_calls_without_holding_the_machine() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let spec: SimSpec = "h100-80gb:1".parse().unwrap();
        let mut a = SimBackend::open(&dir, spec.clone()).unwrap();
        a.with_machine(|m| m.latency = "create-gi=400".parse().unwrap())
            .unwrap();
        let mut b = SimBackend::open(&dir, spec).unwrap();
        let creator = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            a.create_gi(0, 19, 0).unwrap();
            t0.elapsed()
        });
        // While the create sleeps, another process's calls go through at once (the file lock is not held).
        std::thread::sleep(std::time::Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        assert_eq!(b.snapshot().unwrap().gpus[0].instances.len(), 1);
        assert!(t0.elapsed() < std::time::Duration::from_millis(250));
        assert!(creator.join().unwrap() >= std::time::Duration::from_millis(400));
    }

    #[test]
    fn one_read_snapshot_equals_the_per_call_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let mut b =
            SimBackend::open(&dir, "h100-80gb:2,a30-24gb:1:mig-off".parse().unwrap()).unwrap();
        b.create_gi(1, 9, 4).unwrap();
        b.create_default_ci(1, 1).unwrap();
        assert_eq!(b.snapshot().unwrap(), per_call_snapshot(&mut b));
    }

    #[test]
    fn state_is_shared_through_the_file_and_spec_mismatch_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let spec: SimSpec = "h100-80gb:2".parse().unwrap();
        let mut a = SimBackend::open(&dir, spec.clone()).unwrap();
        let mut b = SimBackend::open(&dir, spec).unwrap();
        let gi = a.create_gi(1, 9, 4).unwrap();
        assert_eq!(b.instances(1).unwrap()[0].id, gi);
        assert!(matches!(
            b.create_gi(1, 9, 4),
            Err(GpuError::Nvml {
                code: Code::InsufficientResources,
                ..
            })
        ));
        assert!(matches!(
            b.profiles(2),
            Err(GpuError::NoSuchGpu { index: 2, count: 2 })
        ));
        let e = SimBackend::open(&dir, "a100-40gb".parse().unwrap())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("already simulates h100-80gb:2"),
            "{e}"
        );
    }
}
