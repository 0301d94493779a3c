#!/usr/bin/env bash
# Slurm TaskProlog (runs as the job's user before each task): hand the job's MIG slice to the task. Slurm reads
# `export NAME=value` lines from its stdout into the task's environment.
set -euo pipefail
DIR=${MIGRUN_SLURM_DIR:-/run/migrun-slurm}
f="$DIR/${SLURM_JOB_ID:?}"
[ -r "$f" ] || exit 0
read -r uuid lease profile <"$f"
# CUDA enumerates only the slice; containers started by the job (enroot/pyxis, podman with the NVIDIA hook) get it
# through NVIDIA_VISIBLE_DEVICES.
echo "export CUDA_VISIBLE_DEVICES=$uuid"
echo "export NVIDIA_VISIBLE_DEVICES=$uuid"
echo "export MIGRUN_LEASE=$lease"
echo "export MIGRUN_PROFILE=$profile"
