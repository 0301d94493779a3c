//! Test hooks for crash safety and partial failure: named crash points and a fault-injecting backend; they must do nothing in a release build.
//!
//! - `MIGRUN_TEST_CRASH_AT=<step>` makes the process SIGKILL itself at that step of allocate or
//!   release (the steps are [`ALLOC_STEPS`] and [`RELEASE_STEPS`]). Nothing runs after it: no
//!   destructors, no cleanup, exactly like `kill -9`.
//! - `MIGRUN_TEST_FAIL=<op>[=<CODE>][,...]` makes the named backend operation fail with an NVML code
//!   (default `UNKNOWN`): ops are `create-gi`, `create-ci`, `destroy-ci`, `destroy-gi`; codes are
//!   NVML's spellings such as `INSUFFICIENT_RESOURCES` or `IN_USE`.
//!
//! Both are read only in debug builds (`cfg(debug_assertions)`, i.e. `cargo build` / `cargo test`),
//! so a production binary cannot be made to crash or fail by its environment.

use crate::gpu::{
    Backend, Code, ComputeInstance, GiProfile, GpuError, GpuInfo, GpuInstance, MigMode,
};

/// Environment variable naming the step at which to crash.
pub(crate) const CRASH_ENV: &str = "MIGRUN_TEST_CRASH_AT";
/// Environment variable listing backend operations to fail.
pub(crate) const FAIL_ENV: &str = "MIGRUN_TEST_FAIL";

/// Every crash point of an allocation that creates an instance, in order.
pub const ALLOC_STEPS: &[&str] = &[
    "after-intent",
    // The lock is released here: the GI and CI are made without it (alloc::inflight).
    "reserved-unlocked",
    "after-create-gi",
    "after-journal-gi",
    "after-create-ci",
    "after-record-created",
    "after-write-lease",
];

/// Every crash point of a compute-instance allocation that also creates its sharing GPU instance, in
/// order (into an existing one: only the first two and the last three).
pub const CI_ALLOC_STEPS: &[&str] = &[
    "ci-after-intent",
    // The lock is released here: the GI (and its record and slot, under the lock again) and the CI are made
    // without it (issue 23).
    "ci-reserved-unlocked",
    "ci-after-create-gi",
    "ci-after-journal-gi",
    "ci-after-record-gi",
    "ci-after-create-ci",
    "ci-after-journal-ci",
    "ci-after-write-lease",
];

/// Crash points of an allocation that first destroys idle kept instances to make room: the claim (under the lock),
/// the lock dropped, the destroy made (issue 23: the destroy runs without the lock).
pub const EVICT_STEPS: &[&str] = &[
    "evict-after-intent",
    "evict-unlocked",
    "evict-after-destroy",
];

/// Crash points of a sweep's destroys (`migrun gc`, or an allocation's sweep): a dead holder's lease, a draining lease
/// or what an interrupted allocation left is claimed under the lock, the lock dropped, the destroy made (issue 23).
pub const GC_STEPS: &[&str] = &["gc-after-claim", "gc-unlocked", "gc-after-destroy"];

/// Crash points of gc's expiry of a kept instance idle for `keep_idle_s` (claim, lock dropped, destroy made).
pub const EXPIRE_STEPS: &[&str] = &[
    "expire-after-claim",
    "expire-unlocked",
    "expire-after-destroy",
];

/// The crash point of an allocation that takes over an instance still releasing (issue 23).
pub const TAKEOVER_STEPS: &[&str] = &["reuse-releasing-after-drop"];

/// The crash point of a container's end decided without the driver (alloc::detached): the lease is draining and no
/// worker was started yet.
pub const END_STEPS: &[&str] = &["end-after-mark-draining"];

/// The crash point of a compute-instance release, besides [`RELEASE_STEPS`], that also destroys its emptied sharing GPU
/// instance: the GPU instance claimed (the lease dropped) under the lock, before its destroy without the lock.
pub const CI_RELEASE_STEPS: &[&str] = &["ci-release-after-claim-gi"];

/// Every crash point of a release that destroys an instance, in order.
pub const RELEASE_STEPS: &[&str] = &[
    "release-after-mark-draining",
    // The destroy is claimed and the lock released: CI and GI are destroyed without it.
    "release-after-claim",
    "release-after-destroy-ci",
    "release-after-destroy-gi",
    "release-after-remove-record",
];

/// Die here, as `kill -9` would, when the test hook names this step (debug builds only).
pub(crate) fn crash_point(step: &str) {
    if cfg!(debug_assertions) && std::env::var(CRASH_ENV).is_ok_and(|v| v == step) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; if sending it failed, abort is the next closest thing.
        std::process::abort();
    }
}

/// A backend operation that a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    CreateGi,
    CreateCi,
    DestroyCi,
    DestroyGi,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "create-gi" => Op::CreateGi,
            "create-ci" => Op::CreateCi,
            "destroy-ci" => Op::DestroyCi,
            "destroy-gi" => Op::DestroyGi,
            _ => return None,
        })
    }
}

fn code_named(s: &str) -> Option<Code> {
    [
        Code::InvalidArgument,
        Code::NotSupported,
        Code::NoPermission,
        Code::NotFound,
        Code::InsufficientResources,
        Code::InUse,
        Code::GpuLost,
        Code::Unknown,
    ]
    .into_iter()
    .find(|c| c.as_str().eq_ignore_ascii_case(s))
}

/// Parse a fault list such as `create-ci=INSUFFICIENT_RESOURCES,destroy-gi`.
pub(crate) fn parse_faults(spec: &str) -> Result<Vec<(Op, Code)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (op, code) = item.split_once('=').unwrap_or((item, "UNKNOWN"));
        let op = Op::parse(op).ok_or_else(|| {
            format!("{FAIL_ENV}: unknown operation {op:?} (create-gi, create-ci, destroy-ci, destroy-gi)")
        })?;
        let code = code_named(code)
            .ok_or_else(|| format!("{FAIL_ENV}: unknown NVML code {code:?} (e.g. IN_USE)"))?;
        out.push((op, code));
    }
    Ok(out)
}

/// The faults asked for by the environment (always none in a release build).
pub(crate) fn faults_from_env() -> Result<Vec<(Op, Code)>, String> {
    if !cfg!(debug_assertions) {
        return Ok(Vec::new());
    }
    match std::env::var(FAIL_ENV) {
        Ok(spec) => parse_faults(&spec),
        Err(_) => Ok(Vec::new()),
    }
}

/// A backend that fails chosen operations with chosen NVML codes and passes everything else through.
pub(crate) struct FaultInjector<'a> {
    pub inner: &'a mut dyn Backend,
    pub faults: Vec<(Op, Code)>,
}

impl FaultInjector<'_> {
    fn check(&self, op: Op, what: &str, gpu: u32) -> Result<(), GpuError> {
        match self.faults.iter().find(|(o, _)| *o == op) {
            Some((_, code)) => Err(GpuError::Nvml {
                op: what.into(),
                gpu,
                code: *code,
                detail: "injected by MIGRUN_TEST_FAIL".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Backend for FaultInjector<'_> {
    fn kind(&self) -> crate::gpu::BackendKind {
        self.inner.kind()
    }
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        self.inner.gpus()
    }
    fn profiles(&mut self, gpu: u32) -> Result<Vec<GiProfile>, GpuError> {
        self.inner.profiles(gpu)
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        self.inner.instances(gpu)
    }
    fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, GpuError> {
        self.check(Op::CreateGi, "creating a GPU instance", gpu)?;
        self.inner.create_gi(gpu, profile_id, start)
    }
    fn create_default_ci(&mut self, gpu: u32, gi: u32) -> Result<ComputeInstance, GpuError> {
        self.check(Op::CreateCi, "creating the default compute instance", gpu)?;
        self.inner.create_default_ci(gpu, gi)
    }
    fn ci_profiles(&mut self, gpu: u32, gi: u32) -> Result<Vec<crate::gpu::CiProfile>, GpuError> {
        self.inner.ci_profiles(gpu, gi)
    }
    fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, GpuError> {
        self.check(Op::CreateCi, "creating a compute instance", gpu)?;
        self.inner.create_ci(gpu, gi, profile_id, start)
    }
    fn ci_placements(
        &mut self,
        gpu: u32,
        gi: u32,
    ) -> Result<Vec<crate::gpu::CiPlacement>, GpuError> {
        self.inner.ci_placements(gpu, gi)
    }
    fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), GpuError> {
        self.check(Op::DestroyCi, "destroying a compute instance", gpu)?;
        self.inner.destroy_ci(gpu, gi, ci)
    }
    fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), GpuError> {
        self.check(Op::DestroyGi, "destroying a GPU instance", gpu)?;
        self.inner.destroy_gi(gpu, gi)
    }
    fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<MigMode, GpuError> {
        self.inner.set_mig_mode(gpu, enable)
    }
    fn gpu_processes(&mut self, gpu: u32) -> Result<u32, GpuError> {
        self.inner.gpu_processes(gpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs() {
        assert_eq!(
            parse_faults("create-ci=insufficient_resources, destroy-gi").unwrap(),
            vec![
                (Op::CreateCi, Code::InsufficientResources),
                (Op::DestroyGi, Code::Unknown)
            ]
        );
        assert!(parse_faults("make-coffee").is_err());
        assert!(parse_faults("create-gi=NOPE").is_err());
    }
}
