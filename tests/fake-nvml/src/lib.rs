//! A fake `libnvidia-ml.so` exporting the NVML C symbols migrun calls, backed by migrun's simulator; it must not be loaded outside tests.
//!
//! Configuration (read at `nvmlInit`, see README.md): `MIGRUN_FAKE_NVML` (GPU models, `--simulate`
//! grammar), `MIGRUN_FAKE_NVML_STATE` (the machine's state file, shared by every process),
//! `MIGRUN_FAKE_NVML_FAIL` (fault injection), `MIGRUN_FAKE_NVML_COUNT` (call counters),
//! `MIGRUN_FAKE_NVML_NONROOT` and `MIGRUN_FAKE_NVML_NOMIG`.
//!
//! Every export follows nvml.h's contract: NULL out-pointers give INVALID_ARGUMENT, short buffers
//! INSUFFICIENT_SIZE, list calls with a NULL array return the count, GI/CI management needs root
//! (NO_PERMISSION otherwise), and the simulator supplies NOT_SUPPORTED (MIG off),
//! INSUFFICIENT_RESOURCES (overlap, limits) and IN_USE (destroy with CIs or processes). No export
//! lets a panic cross the C boundary: a panic becomes NVML_ERROR_UNKNOWN.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_snake_case)]

#[cfg(test)]
mod abi_tests;
mod config;
mod handle;

use config::Config;
use handle::{Handle, Kind};
use migrun::gpu::sim::models::Model;
use migrun::gpu::sim::{DriverOp, SimMachine, SimStore};
use migrun::gpu::{CiProfile, GiProfile, MigMode};
use nvml_wrapper_sys::bindings::*;
use std::ffi::{c_char, c_uint, c_ulonglong, CStr};
use std::sync::{Mutex, MutexGuard};

type Ret = nvmlReturn_t;
/// An NVML call's outcome inside the fake: `Err` carries the NVML_ERROR_* code.
type R<T = ()> = Result<T, Ret>;

const SUCCESS: Ret = nvmlReturn_enum_NVML_SUCCESS;
const UNINITIALIZED: Ret = nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
const INVALID_ARGUMENT: Ret = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: Ret = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const NO_PERMISSION: Ret = nvmlReturn_enum_NVML_ERROR_NO_PERMISSION;
const NOT_FOUND: Ret = nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
const INSUFFICIENT_SIZE: Ret = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const DRIVER_NOT_LOADED: Ret = nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
const RESET_REQUIRED: Ret = nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED;
const VERSION_MISMATCH: Ret = nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
const UNKNOWN: Ret = nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// nvml.h NVML_VALUE_NOT_AVAILABLE for unsigned fields: how unknown engine counts are reported.
const NOT_AVAILABLE: c_uint = c_uint::MAX;
/// nvmlProcessInfo_t's gpuInstanceId / computeInstanceId for a process outside MIG.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;
/// What nvmlSystemGetDriverVersion reports (the driver of the H100 capture in tests/fixtures).
const DRIVER_VERSION: &str = "580.159.04";
/// Product name of a GPU listed in MIGRUN_FAKE_NVML_NOMIG.
const NOMIG_NAME: &str = "Fake non-MIG GPU";

fn struct_version<T>(v: u32) -> c_uint {
    std::mem::size_of::<T>() as c_uint | (v << 24)
}

/// Every symbol this library exports (fault-injection rules and counters are checked against it).
pub const SYMBOLS: &[&str] = &[
    "nvmlInit",
    "nvmlInit_v2",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceSetMigMode",
    "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    "nvmlDeviceGetGpuInstanceRemainingCapacity",
    "nvmlDeviceCreateGpuInstance",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlDeviceGetGpuInstances",
    "nvmlDeviceGetGpuInstanceById",
    "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlGpuInstanceGetComputeInstanceById",
    "nvmlComputeInstanceGetInfo_v2",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetComputeRunningProcesses_v3",
];

/// One NVML session: the configuration read at init plus NVML's init reference count.
struct Session {
    cfg: Config,
    store: SimStore,
    refs: u32,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn session() -> MutexGuard<'static, Option<Session>> {
    // A panic inside a call is caught and reported as UNKNOWN; the state it guarded is plain data.
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

/// Say why the fake refuses, on stderr: the only channel a C library has besides its return code.
fn complain(msg: &str) {
    eprintln!("fake-nvml: {msg}");
}

fn code(c: migrun::gpu::Code) -> Ret {
    c.nvml_value()
}

impl Session {
    /// Run `f` on the simulated machine under its file lock.
    fn machine<T>(&self, f: impl FnOnce(&mut SimMachine) -> T) -> R<T> {
        self.store.update(&self.cfg.spec, f).map_err(|e| {
            complain(&e.to_string());
            UNKNOWN
        })
    }

    /// Take as long as the simulated machine's latency model says `op` takes (`migrun sim latency`), after the
    /// machine's file lock is released, so that other processes' calls overlap this one.
    fn wait(&self, op: DriverOp) -> R {
        self.machine(|m| m.latency)?.wait(op);
        Ok(())
    }

    fn privileged(&self) -> R {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root && !self.cfg.nonroot {
            Ok(())
        } else {
            Err(NO_PERMISSION)
        }
    }

    fn gpu_count(&self) -> u32 {
        self.cfg.spec.entries.iter().map(|e| e.count).sum()
    }

    fn mig_capable(&self, gpu: u32) -> bool {
        !self.cfg.nomig.contains(&gpu)
    }

    /// A physical GPU handle, checked.
    fn device(&self, h: *const nvmlDevice_st) -> R<u32> {
        match Handle::from_ptr(h) {
            Some(Handle {
                kind: Kind::Device,
                gpu,
                ..
            }) if gpu < self.gpu_count() => Ok(gpu),
            _ => Err(INVALID_ARGUMENT),
        }
    }

    /// A physical GPU that can do MIG (anything else answers NOT_SUPPORTED, like a real non-MIG GPU).
    fn mig_device(&self, h: *const nvmlDevice_st) -> R<u32> {
        let gpu = self.device(h)?;
        if self.mig_capable(gpu) {
            Ok(gpu)
        } else {
            Err(NOT_SUPPORTED)
        }
    }

    fn model(&self, m: &SimMachine, gpu: u32) -> R<Model> {
        m.model(gpu).map_err(code)
    }

    /// A GPU-instance handle whose instance still exists: (gpu, gi id, its profile).
    fn gi(&self, h: *const nvmlGpuInstance_st) -> R<(u32, u32, GiProfile)> {
        let Some(Handle {
            kind: Kind::Gi,
            gpu,
            gi,
            ..
        }) = Handle::from_ptr(h)
        else {
            return Err(INVALID_ARGUMENT);
        };
        if gpu >= self.gpu_count() {
            return Err(INVALID_ARGUMENT);
        }
        let profile = self.machine(|m| {
            let pid = m.gpus[gpu as usize]
                .instances
                .iter()
                .find(|i| i.id == gi)
                .map(|i| i.profile_id)
                .ok_or(INVALID_ARGUMENT)?;
            let model = self.model(m, gpu)?;
            model
                .profiles
                .into_iter()
                .find(|p| p.id == pid)
                .ok_or(UNKNOWN)
        })??;
        Ok((gpu, gi, profile))
    }

    /// A compute-instance handle (`kind` Ci) or MIG device handle (`kind` Mig) whose CI exists.
    fn ci_of(&self, h: Option<Handle>, kind: Kind) -> R<(u32, u32, u32, GiProfile)> {
        let Some(h) = h.filter(|h| h.kind == kind && h.gpu < self.gpu_count()) else {
            return Err(INVALID_ARGUMENT);
        };
        let profile = self.machine(|m| {
            let inst = m.gpus[h.gpu as usize]
                .instances
                .iter()
                .find(|i| i.id == h.gi && i.cis.iter().any(|c| c.id == h.ci))
                .ok_or(INVALID_ARGUMENT)?;
            let pid = inst.profile_id;
            self.model(m, h.gpu)?
                .profiles
                .into_iter()
                .find(|p| p.id == pid)
                .ok_or(UNKNOWN)
        })??;
        Ok((h.gpu, h.gi, h.ci, profile))
    }

    /// Every MIG device of a GPU, in (GI id, CI id) order: what the index of
    /// nvmlDeviceGetMigDeviceHandleByIndex walks.
    fn mig_devices(&self, gpu: u32) -> R<Vec<(u32, u32)>> {
        self.machine(|m| {
            let mut v: Vec<(u32, u32)> = m.gpus[gpu as usize]
                .instances
                .iter()
                .flat_map(|i| i.cis.iter().map(move |c| (i.id, c.id)))
                .collect();
            v.sort();
            v
        })
    }
}

fn or_na(v: Option<u32>) -> c_uint {
    v.unwrap_or(NOT_AVAILABLE)
}

fn ret(r: R) -> Ret {
    match r {
        Ok(()) => SUCCESS,
        Err(c) => c,
    }
}

/// The body of every export: fault injection first, then `f`, with panics turned into UNKNOWN.
fn call(symbol: &'static str, f: impl FnOnce(&Session) -> R) -> Ret {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let guard = session();
        let Some(s) = guard.as_ref() else {
            return UNINITIALIZED;
        };
        match s.cfg.use_symbol(symbol) {
            Ok(Some(c)) => return c,
            Ok(None) => {}
            Err(e) => {
                complain(&e);
                return UNKNOWN;
            }
        }
        ret(f(s))
    }));
    out.unwrap_or_else(|_| {
        complain(&format!("{symbol} panicked"));
        UNKNOWN
    })
}

/// Store `v` through a caller's out-pointer.
///
/// # Safety
/// `p` is NULL or valid for writing one `T` (nvml.h's contract for every out-parameter).
unsafe fn put<T>(p: *mut T, v: T) -> R {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and valid for writes by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Read a caller's in/out count.
///
/// # Safety
/// `p` is NULL or valid for reading one c_uint.
unsafe fn get_count(p: *const c_uint) -> R<c_uint> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and valid for reads by the caller's contract.
    Ok(unsafe { p.read() })
}

/// Copy a string with its NUL into a caller's buffer of `len` bytes.
///
/// # Safety
/// `buf` is NULL or valid for writing `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> R {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` holds at least s.len() + 1 bytes (checked above); the source is a live &str
    // that cannot overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}

/// Two-phase list output: a NULL array returns the count; a short array gives INSUFFICIENT_SIZE
/// with the needed count; otherwise the items are copied and the count set.
///
/// # Safety
/// `count` is NULL or valid for reads and writes of one c_uint; `arr` is NULL or valid for
/// writing `*count` elements.
unsafe fn put_list<T: Copy>(arr: *mut T, count: *mut c_uint, items: &[T]) -> R {
    let n = items.len() as c_uint;
    if arr.is_null() {
        // SAFETY: forwarded caller contract for `count`.
        return unsafe { put(count, n) };
    }
    // SAFETY: forwarded caller contract for `count`.
    let cap = unsafe { get_count(count)? };
    // SAFETY: forwarded caller contract for `count`.
    unsafe { put(count, n)? };
    if cap < n {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `arr` holds at least `cap >= n` elements by the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), arr, items.len()) };
    Ok(())
}

/// A fixed-size C name field from a Rust string (truncated, always NUL-terminated).
fn c_name<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Init, shutdown, errors, system.

fn init(symbol: &'static str) -> Ret {
    let out = std::panic::catch_unwind(|| {
        let mut guard = session();
        let cfg = match Config::from_env(SYMBOLS) {
            Ok(c) => c,
            Err(e) => {
                complain(&e);
                return DRIVER_NOT_LOADED;
            }
        };
        // An injected init failure leaves NVML uninitialised, as a failed real init does.
        match cfg.use_symbol(symbol) {
            Ok(Some(c)) => return c,
            Ok(None) => {}
            Err(e) => {
                complain(&e);
                return UNKNOWN;
            }
        }
        let store = SimStore::new(&cfg.state);
        // Load (or create) the machine now, so a bad spec or state file fails init, not a later call.
        match store.update(&cfg.spec, |m| m.latency) {
            // The simulated driver's init takes as long as the latency model says.
            Ok(l) => l.wait(DriverOp::Init),
            Err(e) => {
                complain(&e.to_string());
                return DRIVER_NOT_LOADED;
            }
        }
        // NVML reference-counts init; a later init re-reads the environment (tests change it between sessions).
        let refs = guard.as_ref().map_or(0, |s| s.refs) + 1;
        *guard = Some(Session { cfg, store, refs });
        SUCCESS
    });
    out.unwrap_or(UNKNOWN)
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    init("nvmlInit_v2")
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> Ret {
    init("nvmlInit")
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init("nvmlInitWithFlags")
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    let code = call("nvmlShutdown", |_| Ok(()));
    let mut guard = session();
    match guard.as_mut() {
        None => UNINITIALIZED,
        Some(s) => {
            s.refs -= 1;
            if s.refs == 0 {
                *guard = None;
            }
            code
        }
    }
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let s: &'static CStr = match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        15 => c"GPU is lost",
        16 => c"GPU requires reset",
        19 => c"In use by another client",
        23 => c"Insufficient resources",
        25 => c"Argument version mismatch",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

/// # Safety
/// nvml.h: `version` is valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    call("nvmlSystemGetDriverVersion", |_| {
        // SAFETY: caller contract above.
        unsafe { put_str(version, length, DRIVER_VERSION) }
    })
}

// ---------------------------------------------------------------------------------------------
// Devices.

/// # Safety
/// nvml.h: `deviceCount` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(deviceCount: *mut c_uint) -> Ret {
    call("nvmlDeviceGetCount_v2", |s| {
        // SAFETY: caller contract above.
        unsafe { put(deviceCount, s.gpu_count()) }
    })
}

/// # Safety
/// nvml.h: `device` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> Ret {
    call("nvmlDeviceGetHandleByIndex_v2", |s| {
        if index >= s.gpu_count() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: caller contract above.
        unsafe { put(device, Handle::device(index).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `uuid` is valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    call("nvmlDeviceGetUUID", |s| {
        let text = match Handle::from_ptr(device) {
            Some(h) if h.kind == Kind::Mig => {
                s.ci_of(Some(h), Kind::Mig)?;
                s.machine(|m| {
                    m.gpus[h.gpu as usize]
                        .instances
                        .iter()
                        .find(|i| i.id == h.gi)
                        .and_then(|i| i.cis.iter().find(|c| c.id == h.ci))
                        .map(|c| c.uuid.clone())
                })?
                .ok_or(INVALID_ARGUMENT)?
            }
            _ => {
                let gpu = s.device(device)?;
                s.machine(|m| m.gpus[gpu as usize].uuid.clone())?
            }
        };
        // SAFETY: caller contract above.
        unsafe { put_str(uuid, length, &text) }
    })
}

/// # Safety
/// nvml.h: `name` is valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> Ret {
    call("nvmlDeviceGetName", |s| {
        let text = match Handle::from_ptr(device) {
            // A MIG device is named after its parent and profile, e.g. "NVIDIA H100 80GB HBM3 MIG 3g.40gb".
            Some(h) if h.kind == Kind::Mig => {
                let (gpu, _, _, p) = s.ci_of(Some(h), Kind::Mig)?;
                let product = s.machine(|m| s.model(m, gpu).map(|m| m.product))??;
                format!("{product} {}", p.name)
            }
            _ => {
                let gpu = s.device(device)?;
                if !s.mig_capable(gpu) {
                    NOMIG_NAME.to_string()
                } else {
                    s.machine(|m| s.model(m, gpu).map(|m| m.product))??
                        .to_string()
                }
            }
        };
        // SAFETY: caller contract above.
        unsafe { put_str(name, length, &text) }
    })
}

/// Total memory in bytes of a GPU or MIG device handle.
fn memory_bytes(s: &Session, device: nvmlDevice_t) -> R<u64> {
    let mib = match Handle::from_ptr(device) {
        Some(h) if h.kind == Kind::Mig => s.ci_of(Some(h), Kind::Mig)?.3.memory_mib,
        _ => {
            let gpu = s.device(device)?;
            s.machine(|m| s.model(m, gpu).map(|m| m.memory_mib))??
        }
    };
    Ok(mib << 20)
}

/// # Safety
/// nvml.h: `memory` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> Ret {
    call("nvmlDeviceGetMemoryInfo", |s| {
        let total = memory_bytes(s, device)?;
        let v = nvmlMemory_t {
            total,
            free: total,
            used: 0,
        };
        // SAFETY: caller contract above.
        unsafe { put(memory, v) }
    })
}

/// # Safety
/// nvml.h: `memory` is a valid in/out pointer whose `version` is set.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> Ret {
    call("nvmlDeviceGetMemoryInfo_v2", |s| {
        if memory.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL and valid for reads by the caller's contract.
        let version = unsafe { (*memory).version };
        if version != struct_version::<nvmlMemory_v2_t>(2) {
            return Err(VERSION_MISMATCH);
        }
        let total = memory_bytes(s, device)?;
        let v = nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            free: total,
            used: 0,
        };
        // SAFETY: caller contract above.
        unsafe { put(memory, v) }
    })
}

// ---------------------------------------------------------------------------------------------
// MIG mode.

/// # Safety
/// nvml.h: both are valid out-pointers.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    currentMode: *mut c_uint,
    pendingMode: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetMigMode", |s| {
        let gpu = s.mig_device(device)?;
        let mode = s.machine(|m| m.gpus[gpu as usize].mig)?;
        // SAFETY: caller contract above.
        unsafe {
            put(currentMode, mode.current as c_uint)?;
            put(pendingMode, mode.pending as c_uint)
        }
    })
}

/// # Safety
/// nvml.h: `activationStatus` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    activationStatus: *mut nvmlReturn_t,
) -> Ret {
    call("nvmlDeviceSetMigMode", |s| {
        let gpu = s.mig_device(device)?;
        let enable = match mode {
            NVML_DEVICE_MIG_DISABLE => false,
            NVML_DEVICE_MIG_ENABLE => true,
            _ => return Err(INVALID_ARGUMENT),
        };
        s.privileged()?;
        let after: MigMode = s.machine(|m| m.set_mig_mode(gpu, enable))?.map_err(code)?;
        s.wait(DriverOp::MigMode)?;
        // The change waits for a GPU reset (`migrun sim reset-gpu` / SimMachine::reset_gpu), as on hardware.
        let status = if after.change_pending() {
            RESET_REQUIRED
        } else {
            SUCCESS
        };
        // SAFETY: caller contract above.
        unsafe { put(activationStatus, status) }
    })
}

// ---------------------------------------------------------------------------------------------
// GPU-instance profiles.

/// The profile at NVML index `index` of a MIG-capable GPU.
fn profile_at(s: &Session, device: nvmlDevice_t, index: c_uint) -> R<GiProfile> {
    let gpu = s.mig_device(device)?;
    if index >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(INVALID_ARGUMENT);
    }
    s.machine(|m| m.profiles(gpu))?
        .map_err(code)?
        .into_iter()
        .find(|p| p.nvml_index == index)
        .ok_or(NOT_SUPPORTED)
}

/// The profile with ID `profile_id` (what placement/capacity/create calls take), with live remaining capacity.
fn profile_by_id(s: &Session, gpu: u32, profile_id: c_uint) -> R<GiProfile> {
    s.machine(|m| m.profiles(gpu))?
        .map_err(code)?
        .into_iter()
        .find(|p| p.id == profile_id)
        .ok_or(INVALID_ARGUMENT)
}

/// # Safety
/// nvml.h: `info` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> Ret {
    call("nvmlDeviceGetGpuInstanceProfileInfo", |s| {
        let p = profile_at(s, device, profile)?;
        let v = nvmlGpuInstanceProfileInfo_t {
            id: p.id,
            isP2pSupported: p.p2p as c_uint,
            sliceCount: p.slice_count,
            instanceCount: p.instance_count,
            multiprocessorCount: or_na(p.sm),
            copyEngineCount: or_na(p.ce),
            decoderCount: or_na(p.dec),
            encoderCount: or_na(p.enc),
            jpegCount: or_na(p.jpeg),
            ofaCount: or_na(p.ofa),
            memorySizeMB: p.memory_mib as c_ulonglong,
        };
        // SAFETY: caller contract above.
        unsafe { put(info, v) }
    })
}

/// # Safety
/// nvml.h: `info` is a valid in/out pointer whose `version` selects the v2 or v3 layout.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_v2_t,
) -> Ret {
    call("nvmlDeviceGetGpuInstanceProfileInfoV", |s| {
        if info.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL; every layout starts with the version field the caller set.
        let version = unsafe { info.cast::<c_uint>().read() };
        let v2 = struct_version::<nvmlGpuInstanceProfileInfo_v2_t>(2);
        let v3 = struct_version::<nvmlGpuInstanceProfileInfo_v3_t>(3);
        if version != v2 && version != v3 {
            return Err(VERSION_MISMATCH);
        }
        let p = profile_at(s, device, profile)?;
        if version == v2 {
            let v = nvmlGpuInstanceProfileInfo_v2_t {
                version,
                id: p.id,
                isP2pSupported: p.p2p as c_uint,
                sliceCount: p.slice_count,
                instanceCount: p.instance_count,
                multiprocessorCount: or_na(p.sm),
                copyEngineCount: or_na(p.ce),
                decoderCount: or_na(p.dec),
                encoderCount: or_na(p.enc),
                jpegCount: or_na(p.jpeg),
                ofaCount: or_na(p.ofa),
                memorySizeMB: p.memory_mib as c_ulonglong,
                name: c_name(&p.name),
            };
            // SAFETY: the caller declared (by version) a v2 struct behind `info`.
            unsafe { put(info, v) }
        } else {
            let v = nvmlGpuInstanceProfileInfo_v3_t {
                version,
                id: p.id,
                sliceCount: p.slice_count,
                instanceCount: p.instance_count,
                multiprocessorCount: or_na(p.sm),
                copyEngineCount: or_na(p.ce),
                decoderCount: or_na(p.dec),
                encoderCount: or_na(p.enc),
                jpegCount: or_na(p.jpeg),
                ofaCount: or_na(p.ofa),
                memorySizeMB: p.memory_mib as c_ulonglong,
                name: c_name(&p.name),
                capabilities: if p.p2p {
                    NVML_GPU_INSTANCE_PROFILE_CAPS_P2P
                } else {
                    0
                },
            };
            // SAFETY: the caller declared (by version) a v3 struct behind `info`.
            unsafe { put(info.cast::<nvmlGpuInstanceProfileInfo_v3_t>(), v) }
        }
    })
}

/// # Safety
/// nvml.h: `count` is a valid in/out pointer; `placements` is NULL or holds `*count` elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profileId: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetGpuInstancePossiblePlacements_v2", |s| {
        let gpu = s.mig_device(device)?;
        let p = profile_by_id(s, gpu, profileId)?;
        let items: Vec<nvmlGpuInstancePlacement_t> = p
            .placements
            .iter()
            .map(|x| nvmlGpuInstancePlacement_t {
                start: x.start,
                size: x.size,
            })
            .collect();
        // SAFETY: caller contract above.
        unsafe { put_list(placements, count, &items) }
    })
}

/// # Safety
/// nvml.h: `count` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: nvmlDevice_t,
    profileId: c_uint,
    count: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetGpuInstanceRemainingCapacity", |s| {
        let gpu = s.mig_device(device)?;
        let p = profile_by_id(s, gpu, profileId)?;
        // SAFETY: caller contract above.
        unsafe { put(count, p.remaining) }
    })
}

// ---------------------------------------------------------------------------------------------
// GPU instances.

/// # Safety
/// nvml.h: `gpuInstance` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstance(
    device: nvmlDevice_t,
    profileId: c_uint,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Ret {
    call("nvmlDeviceCreateGpuInstance", |s| {
        let gpu = s.mig_device(device)?;
        s.privileged()?;
        if gpuInstance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let gi = s
            .machine(|m| m.create_gi_anywhere(gpu, profileId))?
            .map_err(code)?;
        s.wait(DriverOp::CreateGi)?;
        // SAFETY: caller contract above.
        unsafe { put(gpuInstance, Handle::gi(gpu, gi).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `placement` points to a placement; `gpuInstance` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profileId: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Ret {
    call("nvmlDeviceCreateGpuInstanceWithPlacement", |s| {
        let gpu = s.mig_device(device)?;
        s.privileged()?;
        if placement.is_null() || gpuInstance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL and valid for reads by the caller's contract.
        let want = unsafe { placement.read() };
        let gi = s.machine(|m| {
            // A size that is not the profile's own is a bad argument, as on hardware.
            let model = s.model(m, gpu)?;
            if let Some(p) = model.profiles.iter().find(|p| p.id == profileId) {
                if p.placement_size() != want.size {
                    return Err(INVALID_ARGUMENT);
                }
            }
            m.create_gi(gpu, profileId, want.start).map_err(code)
        })??;
        s.wait(DriverOp::CreateGi)?;
        // SAFETY: caller contract above.
        unsafe { put(gpuInstance, Handle::gi(gpu, gi).to_ptr()) }
    })
}

/// MIG must be on for instance queries (nvml.h: NOT_SUPPORTED otherwise).
fn mig_on(s: &Session, gpu: u32) -> R {
    if s.machine(|m| m.gpus[gpu as usize].mig.current)? {
        Ok(())
    } else {
        Err(NOT_SUPPORTED)
    }
}

/// # Safety
/// nvml.h: `count` is a valid in/out pointer; `gpuInstances` is NULL or holds `*count` elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profileId: c_uint,
    gpuInstances: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetGpuInstances", |s| {
        let gpu = s.mig_device(device)?;
        s.privileged()?;
        mig_on(s, gpu)?;
        profile_by_id(s, gpu, profileId)?;
        let ids: Vec<u32> = s.machine(|m| {
            m.gpus[gpu as usize]
                .instances
                .iter()
                .filter(|i| i.profile_id == profileId)
                .map(|i| i.id)
                .collect()
        })?;
        s.wait(DriverOp::List)?;
        let items: Vec<nvmlGpuInstance_t> =
            ids.iter().map(|id| Handle::gi(gpu, *id).to_ptr()).collect();
        // SAFETY: caller contract above.
        unsafe { put_list(gpuInstances, count, &items) }
    })
}

/// # Safety
/// nvml.h: `gpuInstance` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Ret {
    call("nvmlDeviceGetGpuInstanceById", |s| {
        let gpu = s.mig_device(device)?;
        s.privileged()?;
        mig_on(s, gpu)?;
        let exists = s.machine(|m| m.gpus[gpu as usize].instances.iter().any(|i| i.id == id))?;
        if !exists {
            return Err(NOT_FOUND);
        }
        // SAFETY: caller contract above.
        unsafe { put(gpuInstance, Handle::gi(gpu, id).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `info` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gpuInstance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> Ret {
    call("nvmlGpuInstanceGetInfo", |s| {
        let (gpu, gi, p) = s.gi(gpuInstance)?;
        let placement = s
            .machine(|m| {
                m.gpus[gpu as usize]
                    .instances
                    .iter()
                    .find(|i| i.id == gi)
                    .map(|i| i.placement)
            })?
            .ok_or(INVALID_ARGUMENT)?;
        let v = nvmlGpuInstanceInfo_t {
            device: Handle::device(gpu).to_ptr(),
            id: gi,
            profileId: p.id,
            placement: nvmlGpuInstancePlacement_t {
                start: placement.start,
                size: placement.size,
            },
        };
        // SAFETY: caller contract above.
        unsafe { put(info, v) }
    })
}

/// # Safety
/// nvml.h: `gpuInstance` is a handle from this library.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceDestroy(gpuInstance: nvmlGpuInstance_t) -> Ret {
    call("nvmlGpuInstanceDestroy", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        s.privileged()?;
        s.machine(|m| m.destroy_gi(gpu, gi))?.map_err(code)?;
        s.wait(DriverOp::DestroyGi)
    })
}

// ---------------------------------------------------------------------------------------------
// Compute instances.

/// The CI profile a GI offers under NVML_COMPUTE_INSTANCE_PROFILE_* index `profile`, as the
/// simulator serves it (the tables' rows whose ID and count are known, and the full-GI default).
fn ci_profile(s: &Session, gpu: u32, gi: u32, profile: c_uint, eng: c_uint) -> R<CiProfile> {
    if profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT
        || eng >= NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT
    {
        return Err(INVALID_ARGUMENT);
    }
    s.machine(|m| m.ci_profiles(gpu, gi))?
        .map_err(code)?
        .into_iter()
        .find(|p| p.nvml_index == profile)
        .ok_or(NOT_SUPPORTED)
}

/// The CI profile with device ID `id` in a GI; INVALID_ARGUMENT for an ID it does not offer (nvml.h).
fn ci_profile_by_id(s: &Session, gpu: u32, gi: u32, id: c_uint) -> R<CiProfile> {
    s.machine(|m| m.ci_profiles(gpu, gi))?
        .map_err(code)?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or(INVALID_ARGUMENT)
}

/// SMs of a CI profile: the GI's own for the full one; a smaller one's count is unknown to the
/// simulator (the tables are not consulted for it), so NOT_AVAILABLE rather than a guess.
fn ci_sm(gi: &GiProfile, p: &CiProfile) -> c_uint {
    if p.slice_count == gi.slice_count {
        or_na(gi.sm)
    } else {
        NOT_AVAILABLE
    }
}

/// `MIG 3g.40gb` for the full-GI CI, `MIG 1c.3g.40gb` for a smaller one (nvidia-smi's spelling).
fn ci_name(gi: &GiProfile, slices: u32) -> String {
    if slices == gi.slice_count {
        gi.name.clone()
    } else {
        format!("MIG {slices}c.{}", gi.short_name())
    }
}

/// # Safety
/// nvml.h: `info` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gpuInstance: nvmlGpuInstance_t,
    profile: c_uint,
    engProfile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstanceProfileInfo", |s| {
        let (gpu, gi, gp) = s.gi(gpuInstance)?;
        let p = ci_profile(s, gpu, gi, profile, engProfile)?;
        let v = nvmlComputeInstanceProfileInfo_t {
            id: p.id,
            sliceCount: p.slice_count,
            instanceCount: p.instance_count,
            multiprocessorCount: ci_sm(&gp, &p),
            sharedCopyEngineCount: or_na(gp.ce),
            sharedDecoderCount: or_na(gp.dec),
            sharedEncoderCount: or_na(gp.enc),
            sharedJpegCount: or_na(gp.jpeg),
            sharedOfaCount: or_na(gp.ofa),
        };
        // SAFETY: caller contract above.
        unsafe { put(info, v) }
    })
}

/// # Safety
/// nvml.h: `info` is a valid in/out pointer whose `version` is set (v2 layout).
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    gpuInstance: nvmlGpuInstance_t,
    profile: c_uint,
    engProfile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_v2_t,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstanceProfileInfoV", |s| {
        if info.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL; the struct starts with the version field the caller set.
        let version = unsafe { info.cast::<c_uint>().read() };
        if version != struct_version::<nvmlComputeInstanceProfileInfo_v2_t>(2) {
            return Err(VERSION_MISMATCH);
        }
        let (gpu, gi, gp) = s.gi(gpuInstance)?;
        let p = ci_profile(s, gpu, gi, profile, engProfile)?;
        let v = nvmlComputeInstanceProfileInfo_v2_t {
            version,
            id: p.id,
            sliceCount: p.slice_count,
            instanceCount: p.instance_count,
            multiprocessorCount: ci_sm(&gp, &p),
            sharedCopyEngineCount: or_na(gp.ce),
            sharedDecoderCount: or_na(gp.dec),
            sharedEncoderCount: or_na(gp.enc),
            sharedJpegCount: or_na(gp.jpeg),
            sharedOfaCount: or_na(gp.ofa),
            name: c_name(&ci_name(&gp, p.slice_count)),
        };
        // SAFETY: caller contract above.
        unsafe { put(info, v) }
    })
}

/// # Safety
/// nvml.h: `count` is a valid in/out pointer; `placements` is NULL or holds `*count` elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstancePossiblePlacements(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    placements: *mut nvmlComputeInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstancePossiblePlacements", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        let p = ci_profile_by_id(s, gpu, gi, profileId)?;
        let items: Vec<nvmlComputeInstancePlacement_t> = p
            .placements
            .iter()
            .map(|pl| nvmlComputeInstancePlacement_t {
                start: pl.start,
                size: pl.size,
            })
            .collect();
        // SAFETY: caller contract above.
        unsafe { put_list(placements, count, &items) }
    })
}

/// # Safety
/// nvml.h: `count` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceRemainingCapacity(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    count: *mut c_uint,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstanceRemainingCapacity", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        let p = ci_profile_by_id(s, gpu, gi, profileId)?;
        // SAFETY: caller contract above.
        unsafe { put(count, p.remaining) }
    })
}

/// # Safety
/// nvml.h: `computeInstance` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    computeInstance: *mut nvmlComputeInstance_t,
) -> Ret {
    call("nvmlGpuInstanceCreateComputeInstance", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        s.privileged()?;
        if computeInstance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let ci = s
            .machine(|m| m.create_ci_anywhere(gpu, gi, profileId))?
            .map_err(code)?;
        s.wait(DriverOp::CreateCi)?;
        // SAFETY: caller contract above.
        unsafe { put(computeInstance, Handle::ci(gpu, gi, ci.id).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `placement` is a valid in-pointer, `computeInstance` a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstanceWithPlacement(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    placement: *const nvmlComputeInstancePlacement_t,
    computeInstance: *mut nvmlComputeInstance_t,
) -> Ret {
    call("nvmlGpuInstanceCreateComputeInstanceWithPlacement", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        s.privileged()?;
        if computeInstance.is_null() || placement.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, and valid for one read by the caller's contract.
        let want = unsafe { placement.read() };
        let p = ci_profile_by_id(s, gpu, gi, profileId)?;
        if want.size != p.slice_count {
            return Err(INVALID_ARGUMENT);
        }
        let ci = s
            .machine(|m| m.create_ci(gpu, gi, profileId, want.start))?
            .map_err(code)?;
        s.wait(DriverOp::CreateCi)?;
        // SAFETY: caller contract above.
        unsafe { put(computeInstance, Handle::ci(gpu, gi, ci.id).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `count` is a valid in/out pointer; `computeInstances` is NULL or holds `*count` elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    computeInstances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstances", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        s.privileged()?;
        ci_profile_by_id(s, gpu, gi, profileId)?;
        let ids: Vec<u32> = s.machine(|m| {
            let cis: Vec<u32> = m.gpus[gpu as usize]
                .instances
                .iter()
                .find(|i| i.id == gi)
                .map(|i| i.cis.iter().map(|c| c.id).collect())
                .unwrap_or_default();
            cis.into_iter()
                .filter(|c| {
                    m.ci_details(gpu, gi, *c)
                        .is_ok_and(|(id, _)| id == profileId)
                })
                .collect()
        })?;
        let items: Vec<nvmlComputeInstance_t> = ids
            .iter()
            .map(|ci| Handle::ci(gpu, gi, *ci).to_ptr())
            .collect();
        // SAFETY: caller contract above.
        unsafe { put_list(computeInstances, count, &items) }
    })
}

/// # Safety
/// nvml.h: `computeInstance` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gpuInstance: nvmlGpuInstance_t,
    id: c_uint,
    computeInstance: *mut nvmlComputeInstance_t,
) -> Ret {
    call("nvmlGpuInstanceGetComputeInstanceById", |s| {
        let (gpu, gi, _) = s.gi(gpuInstance)?;
        s.privileged()?;
        let exists = s.machine(|m| {
            m.gpus[gpu as usize]
                .instances
                .iter()
                .any(|i| i.id == gi && i.cis.iter().any(|c| c.id == id))
        })?;
        if !exists {
            return Err(NOT_FOUND);
        }
        // SAFETY: caller contract above.
        unsafe { put(computeInstance, Handle::ci(gpu, gi, id).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `info` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    computeInstance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> Ret {
    call("nvmlComputeInstanceGetInfo_v2", |s| {
        let (gpu, gi, ci, _) = s.ci_of(Handle::from_ptr(computeInstance), Kind::Ci)?;
        let (profile_id, placement) = s.machine(|m| m.ci_details(gpu, gi, ci))?.map_err(code)?;
        let v = nvmlComputeInstanceInfo_t {
            device: Handle::device(gpu).to_ptr(),
            gpuInstance: Handle::gi(gpu, gi).to_ptr(),
            id: ci,
            profileId: profile_id,
            placement: nvmlComputeInstancePlacement_t {
                start: placement.start,
                size: placement.size,
            },
        };
        // SAFETY: caller contract above.
        unsafe { put(info, v) }
    })
}

/// # Safety
/// nvml.h: `computeInstance` is a handle from this library.
#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceDestroy(computeInstance: nvmlComputeInstance_t) -> Ret {
    call("nvmlComputeInstanceDestroy", |s| {
        let (gpu, gi, ci, _) = s.ci_of(Handle::from_ptr(computeInstance), Kind::Ci)?;
        s.privileged()?;
        s.machine(|m| m.destroy_ci(gpu, gi, ci))?.map_err(code)?;
        s.wait(DriverOp::DestroyCi)
    })
}

// ---------------------------------------------------------------------------------------------
// MIG devices.

/// # Safety
/// nvml.h: `count` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetMaxMigDeviceCount", |s| {
        let gpu = s.mig_device(device)?;
        // One full-GI CI per GI, so as many MIG devices as the most numerous profile allows.
        let max = s.machine(|m| {
            s.model(m, gpu).map(|m| {
                m.profiles
                    .iter()
                    .map(|p| p.instance_count)
                    .max()
                    .unwrap_or(0)
            })
        })??;
        // SAFETY: caller contract above.
        unsafe { put(count, max) }
    })
}

/// # Safety
/// nvml.h: `migDevice` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    migDevice: *mut nvmlDevice_t,
) -> Ret {
    call("nvmlDeviceGetMigDeviceHandleByIndex", |s| {
        let gpu = s.mig_device(device)?;
        let devs = s.mig_devices(gpu)?;
        let &(gi, ci) = devs.get(index as usize).ok_or(NOT_FOUND)?;
        // SAFETY: caller contract above.
        unsafe { put(migDevice, Handle::mig(gpu, gi, ci).to_ptr()) }
    })
}

/// # Safety
/// nvml.h: `id` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> Ret {
    call("nvmlDeviceGetGpuInstanceId", |s| {
        let h = Handle::from_ptr(device);
        if matches!(
            h,
            Some(Handle {
                kind: Kind::Device,
                ..
            })
        ) {
            s.device(device)?;
            return Err(NOT_SUPPORTED);
        }
        let (_, gi, _, _) = s.ci_of(h, Kind::Mig)?;
        // SAFETY: caller contract above.
        unsafe { put(id, gi) }
    })
}

/// # Safety
/// nvml.h: `id` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> Ret {
    call("nvmlDeviceGetComputeInstanceId", |s| {
        let h = Handle::from_ptr(device);
        if matches!(
            h,
            Some(Handle {
                kind: Kind::Device,
                ..
            })
        ) {
            s.device(device)?;
            return Err(NOT_SUPPORTED);
        }
        let (_, _, ci, _) = s.ci_of(h, Kind::Mig)?;
        // SAFETY: caller contract above.
        unsafe { put(id, ci) }
    })
}

/// # Safety
/// nvml.h: `isMigDevice` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    isMigDevice: *mut c_uint,
) -> Ret {
    call("nvmlDeviceIsMigDeviceHandle", |s| {
        let is_mig = match Handle::from_ptr(device) {
            Some(h) if h.kind == Kind::Mig => {
                s.ci_of(Some(h), Kind::Mig)?;
                1
            }
            _ => {
                s.device(device)?;
                0
            }
        };
        // SAFETY: caller contract above.
        unsafe { put(isMigDevice, is_mig) }
    })
}

/// # Safety
/// nvml.h: `device` is a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    migDevice: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> Ret {
    call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", |s| {
        let (gpu, _, _, _) = s.ci_of(Handle::from_ptr(migDevice), Kind::Mig)?;
        // SAFETY: caller contract above.
        unsafe { put(device, Handle::device(gpu).to_ptr()) }
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Synthetic compute processes: a GPU handle sees all of them (outside MIG and on every GI), a MIG
/// device handle sees those of its GI. PIDs are made up and never belong to a real process.
fn processes(s: &Session, device: nvmlDevice_t) -> R<Vec<nvmlProcessInfo_t>> {
    let proc = |pid: u32, gi: u32, ci: u32| nvmlProcessInfo_t {
        pid,
        usedGpuMemory: c_ulonglong::MAX,
        gpuInstanceId: gi,
        computeInstanceId: ci,
    };
    let h = Handle::from_ptr(device);
    // A MIG device handle sees the processes of its own compute instance only.
    let (gpu, only) = match h {
        Some(h) if h.kind == Kind::Mig => {
            s.ci_of(Some(h), Kind::Mig)?;
            (h.gpu, Some((h.gi, h.ci)))
        }
        _ => (s.device(device)?, None),
    };
    s.machine(|m| {
        let g = &m.gpus[gpu as usize];
        let base = 4_000_000 + gpu * 10_000;
        let mut out = Vec::new();
        if only.is_none() {
            out.extend((0..g.gpu_processes).map(|k| proc(base + k, NO_INSTANCE, NO_INSTANCE)));
        }
        let seen = |gi: u32, ci: u32| only.is_none_or(|x| x == (gi, ci));
        for i in &g.instances {
            // Processes counted on the GI (`migrun sim add-process`) run on its first compute instance.
            let first = i.cis.first().map_or(NO_INSTANCE, |c| c.id);
            if only.is_none() || seen(i.id, first) {
                out.extend((0..i.processes).map(|k| proc(base + 100 * i.id + k, i.id, first)));
            }
            for c in i.cis.iter().filter(|c| seen(i.id, c.id)) {
                let pid0 = base + 100 * i.id + 50 + 10 * c.id;
                out.extend((0..c.processes).map(|k| proc(pid0 + k, i.id, c.id)));
            }
        }
        out
    })
}

/// # Safety
/// nvml.h: `infoCount` is a valid in/out pointer; `infos` is NULL or holds `*infoCount` elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> Ret {
    call("nvmlDeviceGetComputeRunningProcesses_v3", |s| {
        let list = processes(s, device)?;
        // SAFETY: caller contract above.
        let cap = unsafe { get_count(infoCount)? };
        let n = list.len() as c_uint;
        // SAFETY: caller contract above.
        unsafe { put(infoCount, n)? };
        // nvml.h: too small a count (including 0 with a NULL array) is INSUFFICIENT_SIZE unless nothing runs.
        if n == 0 {
            return Ok(());
        }
        if infos.is_null() || cap < n {
            return Err(INSUFFICIENT_SIZE);
        }
        // SAFETY: `infos` holds `cap >= n` elements by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), infos, list.len()) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_nvml_h() {
        // Sizes from nvml.h on LP64: the fake and nvml-wrapper share these bindgen types.
        assert_eq!(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 152);
        assert_eq!(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v3_t>(), 152);
        assert_eq!(std::mem::size_of::<nvmlGpuInstanceInfo_t>(), 24);
        assert_eq!(std::mem::size_of::<nvmlComputeInstanceInfo_t>(), 32);
        assert_eq!(std::mem::size_of::<nvmlProcessInfo_t>(), 24);
        assert_eq!(std::mem::size_of::<nvmlMemory_v2_t>(), 40);
    }

    #[test]
    fn ci_names_are_nvidia_smis() {
        let m = migrun::gpu::sim::models::model("h100-80gb").unwrap();
        let three = m.profiles.iter().find(|p| p.slice_count == 3).unwrap();
        assert_eq!(ci_name(three, 1), "MIG 1c.3g.40gb");
        assert_eq!(ci_name(three, 3), "MIG 3g.40gb");
    }

    #[test]
    fn every_symbol_is_listed_once() {
        let mut v = SYMBOLS.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), SYMBOLS.len());
    }
}
