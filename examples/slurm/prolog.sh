#!/usr/bin/env bash
# Slurm Prolog (runs as root on the compute node before the job): allocate a MIG slice for the job with
# `migrun alloc` and record it in $MIGRUN_SLURM_DIR/<job id>, where task-prolog.sh and epilog.sh find it.
#
# The profile comes from MIGRUN_SLURM_PROFILE when set (e.g. through slurm.conf's PrologEnv or a per-partition
# wrapper), else from the job's comment: `sbatch --comment=migrun:3g.40gb job.sh`. A job without either gets no slice.
# A failing Prolog makes Slurm requeue the job and drain the node, so "no room" waits up to MIGRUN_SLURM_WAIT
# seconds (default 300) first.
set -euo pipefail

MIGRUN=${MIGRUN:-migrun}
DIR=${MIGRUN_SLURM_DIR:-/run/migrun-slurm}
WAIT=${MIGRUN_SLURM_WAIT:-300}
job=${SLURM_JOB_ID:?SLURM_JOB_ID is not set: run this as the Slurm Prolog}

profile=${MIGRUN_SLURM_PROFILE:-}
if [ -z "$profile" ] && command -v scontrol >/dev/null; then
  comment=$(scontrol show job -o "$job" | sed -n 's/.* Comment=\([^ ]*\).*/\1/p')
  case "$comment" in migrun:*) profile=${comment#migrun:} ;; esac
fi
[ -n "$profile" ] || exit 0 # this job asked for no slice

mkdir -p "$DIR"
chmod 755 "$DIR"
# Charge the lease to the job's user, so per-user limits in /etc/migrun/config.toml apply to them (--for-uid is
# for root callers such as this prolog). No --holder-pid: the lease is the job's until epilog.sh releases it.
if ! got=$("$MIGRUN" alloc --profile "$profile" --for-uid "${SLURM_JOB_UID:-0}" --wait="$WAIT"); then
  echo "migrun prolog: job $job: no $profile slice within ${WAIT}s (see \`migrun status\`)" >&2
  exit 1
fi
# `migrun alloc` prints `MIG-<uuid> lease <id>`.
read -r uuid _ lease <<<"$got"
tmp=$(mktemp "$DIR/.$job.XXXXXX")
printf '%s %s %s\n' "$uuid" "$lease" "$profile" >"$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$DIR/$job"
