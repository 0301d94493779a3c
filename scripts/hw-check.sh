#!/usr/bin/env bash
# Read-only check of migrun against a real GPU host (docs/hardware.md). Never changes MIG mode, never
# creates or destroys instances, never resets: it only lists, compares with nvidia-smi, shows the
# MIG-disabled refusal and times `migrun profiles` against `nvidia-smi mig -lgip`.
# Usage: scripts/hw-check.sh PATH/TO/migrun OUTDIR [PAIRS]
set -uo pipefail
MIGRUN=${1:?migrun binary}; OUT=${2:?output dir}; PAIRS=${3:-30}
mkdir -p "$OUT"
unset MIGRUN_SIMULATE
export MIGRUN_STATE_DIR="$OUT/state"   # a private state dir: the host's /run/migrun is not touched
run() { echo "\$ $*"; "$@"; echo "exit=$?"; }
{
  echo "# host"; uname -a; nvidia-smi --query-gpu=index,name,uuid,driver_version,mig.mode.current,mig.mode.pending --format=csv
  echo; echo "# nvidia-smi -L"; nvidia-smi -L
  echo; echo "# nvidia-smi mig -lgip"; nvidia-smi mig -lgip
  echo; echo "# nvidia-smi mig -lgipp"; nvidia-smi mig -lgipp
  echo; echo "# migrun status"; run "$MIGRUN" status
  echo; echo "# migrun profiles"; run "$MIGRUN" profiles
  echo; echo "# migrun placements"; run "$MIGRUN" placements
  echo; echo "# migrun alloc --profile 3g.40gb (MIG is disabled: must be refused, nothing created)"; run "$MIGRUN" alloc --profile 3g.40gb
  echo; echo "# migrun mig disable --gpu 0 (already disabled: reports, asks NVML for nothing)"; run "$MIGRUN" mig disable --gpu 0
  echo; echo "# migrun teardown --gpu 0 (nothing of migrun's exists: lists, destroys nothing)"; run "$MIGRUN" teardown --gpu 0
  echo; echo "# nvidia-smi mig -lgi after (must still be: No MIG-enabled devices found)"; nvidia-smi mig -lgi
} >"$OUT/transcript.txt" 2>&1
"$MIGRUN" profiles --json >"$OUT/migrun-profiles.json" 2>>"$OUT/transcript.txt"
"$MIGRUN" placements >"$OUT/migrun-placements.txt" 2>>"$OUT/transcript.txt"
nvidia-smi mig -lgip >"$OUT/nvidia-smi-mig-lgip.txt" 2>&1
nvidia-smi mig -lgipp >"$OUT/nvidia-smi-mig-lgipp.txt" 2>&1
nvidia-smi -L >"$OUT/nvidia-smi-L.txt" 2>&1
"$MIGRUN" status --json >"$OUT/migrun-status.json" 2>>"$OUT/transcript.txt"

# Paired, alternating timings: migrun profiles vs nvidia-smi mig -lgip (each a fresh process).
ns() { date +%s%N; }
: >"$OUT/timings.csv"; echo "pair,migrun_ms,nvidia_smi_ms" >>"$OUT/timings.csv"
for i in $(seq "$PAIRS"); do
  a=$(ns); "$MIGRUN" profiles >/dev/null 2>&1; b=$(ns)
  nvidia-smi mig -lgip >/dev/null 2>&1; c=$(ns)
  echo "$i,$(( (b-a)/1000 )),$(( (c-b)/1000 ))" | awk -F, '{printf "%s,%.3f,%.3f\n",$1,$2/1000,$3/1000}' >>"$OUT/timings.csv"
done
python3 - "$OUT" <<'PY'
import csv, json, re, statistics, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/timings.csv")))
m = [float(r["migrun_ms"]) for r in rows]; n = [float(r["nvidia_smi_ms"]) for r in rows]
ratios = [a / b for a, b in zip(m, n)]
summary = {"pairs": len(rows), "migrun_median_ms": statistics.median(m), "nvidia_smi_median_ms": statistics.median(n),
           "median_of_pair_ratios": statistics.median(ratios)}
# Field-by-field comparison of migrun profiles --json against nvidia-smi mig -lgip.
ours = json.load(open(f"{out}/migrun-profiles.json"))["gpus"]
lgip = open(f"{out}/nvidia-smi-mig-lgip.txt").read().splitlines()
rows = [l.strip("|").split() for l in lgip if l.startswith("|")]
smi = []
for i, r in enumerate(rows):
    if len(r) >= 10 and r[1] == "MIG":
        nxt = rows[i + 1]
        f, t = r[4].split("/")
        smi.append({"gpu": int(r[0]), "name": "MIG " + r[2], "id": int(r[3]), "free": int(f), "total": int(t),
                    "gib": r[5], "p2p": r[6] == "Yes", "sm": int(r[7]), "dec": int(r[8]), "enc": int(r[9]),
                    "ce": int(nxt[0]), "jpeg": int(nxt[1]), "ofa": int(nxt[2])})
mismatch = []
checked = 0
for s in smi:
    g = next(g for g in ours if g["index"] == s["gpu"])
    p = next((p for p in g["profiles"] if p["id"] == s["id"]), None)
    if p is None:
        mismatch.append(f"GPU {s['gpu']} profile {s['id']} missing in migrun"); continue
    mine = {"name": p["name"], "free": p["instances_free"], "total": p["instances_total"],
            "gib": f"{p['memory_mib']/1024:.2f}", "p2p": p["p2p"], "sm": p["sm"], "dec": p["dec"], "enc": p["enc"],
            "ce": p["ce"], "jpeg": p["jpeg"], "ofa": p["ofa"]}
    for k, v in mine.items():
        checked += 1
        if v != s[k]:
            mismatch.append(f"GPU {s['gpu']} ID {s['id']} {k}: migrun {v!r} nvidia-smi {s[k]!r}")
ours_ids = sorted((g["index"], p["id"]) for g in ours for p in g["profiles"])
if ours_ids != sorted((s["gpu"], s["id"]) for s in smi):
    mismatch.append(f"profile sets differ: migrun {ours_ids}")
pp_ours = open(f"{out}/migrun-placements.txt").read().split()
pp_smi = open(f"{out}/nvidia-smi-mig-lgipp.txt").read().split()
summary.update({"lgip_fields_checked": checked, "lgip_mismatches": mismatch,
                "lgipp_identical_tokens": pp_ours == pp_smi})
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
