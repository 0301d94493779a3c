#!/usr/bin/env bash
# Slurm Epilog (runs as root on the compute node after the job): release the job's MIG slice. If a process of the
# job still runs on it, migrun marks the lease draining and `migrun gc` destroys the instance once it is idle.
set -euo pipefail
MIGRUN=${MIGRUN:-migrun}
DIR=${MIGRUN_SLURM_DIR:-/run/migrun-slurm}
job=${SLURM_JOB_ID:?SLURM_JOB_ID is not set: run this as the Slurm Epilog}
f="$DIR/$job"
[ -e "$f" ] || exit 0 # the job had no slice
read -r uuid lease _ <"$f"
# Release by lease id; a lease already gone (an admin's `migrun release`) is not an error here.
if err=$("$MIGRUN" release "$lease" 2>&1 >/dev/null) || [[ $err == *"no lease $lease"* ]]; then
  rm -f "$f"
  exit 0
fi
echo "migrun epilog: job $job: releasing lease $lease ($uuid) failed: $err" >&2
exit 1
