#!/usr/bin/env bash
# Read-only timing on a real GPU host (docs/hardware.md, "Where a fresh process spends its NVML time").
# Part 1 times single NVML calls with nvidia-ml-py (pynvml) in one Python process; part 2 times two migrun
# binaries alternately (OLD probes the profile table in every process, NEW keeps it in the state dir), 30 pairs of
# fresh processes per command, each binary with its own throw-away state dir. Never changes MIG mode, never
# creates or destroys instances: the dry run only plans.
# Usage: scripts/hw-nvml-timing.sh PATH/TO/OLD-migrun PATH/TO/NEW-migrun
set -uo pipefail
OLD=${1:?old migrun binary}; NEW=${2:?new migrun binary}
unset MIGRUN_SIMULATE
nvidia-smi --query-gpu=index,name,driver_version,persistence_mode,mig.mode.current --format=csv
python3 - <<'PY'
import time, pynvml
t0 = time.perf_counter(); pynvml.nvmlInit(); t1 = time.perf_counter()
print("first nvmlInit in a fresh process: %.2f ms" % ((t1 - t0) * 1000))
h = pynvml.nvmlDeviceGetHandleByIndex(0)
info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, 0)
def tm(name, f, n=20):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            f()
        except pynvml.NVMLError:
            pass
        ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    print("%-40s median %.3f ms" % (name, ts[len(ts) // 2]))
tm("DeviceGetCount", pynvml.nvmlDeviceGetCount)
tm("DeviceGetUUID", lambda: pynvml.nvmlDeviceGetUUID(h))
tm("DeviceGetMigMode", lambda: pynvml.nvmlDeviceGetMigMode(h))
tm("GetGpuInstanceProfileInfo(index 0)", lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, 0))
tm("GetGpuInstanceRemainingCapacity", lambda: pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, info.id))
tm("DeviceGetComputeRunningProcesses", lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h))
PY
STATE=$(mktemp -d)
OLD="$OLD" NEW="$NEW" STATE="$STATE" python3 - <<'PY'
import os, statistics, subprocess, time
bins = {"old": os.environ["OLD"], "new": os.environ["NEW"]}
def once(which, args):
    t = time.perf_counter()
    subprocess.run([bins[which], "--state-dir", os.path.join(os.environ["STATE"], which)] + args,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000
cmds = [("dry run", ["--docker", "/bin/true", "--inject", "env", "--dry-run", "--profile", "1g.10gb", "img", "true"]),
        ("status", ["status"]), ("profiles", ["profiles"])]
for label, args in cmds:
    r = {"old": [], "new": []}
    for i in range(30):
        for w in (("old", "new") if i % 2 == 0 else ("new", "old")):
            r[w].append(once(w, args))
    print("%-9s old median %.2f ms, new median %.2f ms, median paired difference (old - new) %.2f ms" % (
        label, statistics.median(r["old"]), statistics.median(r["new"]),
        statistics.median([a - b for a, b in zip(r["old"], r["new"])])))
PY
rm -rf "$STATE"
nvidia-smi mig -lgi 2>&1 | head -1
