#!/usr/bin/env python3
"""Time READ-ONLY NVML operations on a real GPU (the evidence behind the latency model's init and list defaults,
docs/benchmarks.md). It never changes MIG mode, creates, destroys or resets anything.

Usage: python3 scripts/nvml-latency-probe.py [REPEATS]   (run as any user on a host with the NVIDIA driver)
"""
import ctypes, json, statistics, subprocess, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20

CHILD = r'''
import ctypes, time, json
t0 = time.perf_counter()
lib = ctypes.CDLL("libnvidia-ml.so.1")
t1 = time.perf_counter()
rc_init = lib.nvmlInit_v2()
t2 = time.perf_counter()
n = ctypes.c_uint()
lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
h = ctypes.c_void_p()
lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h))
t3 = time.perf_counter()
cur = ctypes.c_uint(); pend = ctypes.c_uint()
rc_mig = lib.nvmlDeviceGetMigMode(h, ctypes.byref(cur), ctypes.byref(pend))
t4 = time.perf_counter()
# nvmlGpuInstanceProfileInfo_t is 15 uints + a 96-byte name in v2; a generous buffer is enough for timing.
buf = ctypes.create_string_buffer(512)
rc_prof = lib.nvmlDeviceGetGpuInstanceProfileInfo(h, 0, buf)
t5 = time.perf_counter()
arr = (ctypes.c_void_p * 8)(); cnt = ctypes.c_uint()
rc_list = lib.nvmlDeviceGetGpuInstances(h, 0, arr, ctypes.byref(cnt))
t6 = time.perf_counter()
lib.nvmlShutdown()
t7 = time.perf_counter()
print(json.dumps({"dlopen_ms": (t1-t0)*1e3, "init_ms": (t2-t1)*1e3, "count_handle_ms": (t3-t2)*1e3,
  "get_mig_mode_ms": (t4-t3)*1e3, "gi_profile_info_ms": (t5-t4)*1e3, "get_gpu_instances_ms": (t6-t5)*1e3,
  "shutdown_ms": (t7-t6)*1e3, "rc": [rc_init, rc_mig, rc_prof, rc_list], "mig_current": cur.value, "gpus": n.value}))
'''

def stats(xs):
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 2), "min": round(xs[0], 2), "max": round(xs[-1], 2),
            "p90": round(xs[int(0.9 * (len(xs) - 1))], 2)}

rows = []
for _ in range(N):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    rows.append(json.loads(out))
print("fresh-process NVML calls, %d repeats:" % N)
print("return codes (init, get mig mode, gi profile info, get gpu instances):", rows[0]["rc"], "mig current:", rows[0]["mig_current"], "gpus:", rows[0]["gpus"])
for k in ["dlopen_ms", "init_ms", "count_handle_ms", "get_mig_mode_ms", "gi_profile_info_ms", "get_gpu_instances_ms", "shutdown_ms"]:
    print(" ", k, stats([r[k] for r in rows]))

for cmd in (["nvidia-smi", "-L"], ["nvidia-smi", "mig", "-lgip"], ["nvidia-smi", "mig", "-lgi"]):
    ts = []
    for _ in range(N):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True)
        ts.append((time.perf_counter() - t) * 1e3)
    print(" ", " ".join(cmd), "wall ms", stats(ts))
