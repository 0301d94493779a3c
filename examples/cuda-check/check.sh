#!/usr/bin/env bash
# On a real MIG host: run `nvidia-smi -L` inside a CUDA image on a fresh slice, and check that the container sees
# exactly one device, the MIG instance migrun leased to it, and that the slice is free again afterwards.
#
# Settings (environment): PROFILE (1g.10gb), IMAGE (nvidia/cuda base image), MIGRUN (migrun binary),
# MIGRUN_INJECT (an --inject mode; default: migrun detects the NVIDIA container toolkit).
set -euo pipefail

MIGRUN=${MIGRUN:-migrun}
PROFILE=${PROFILE:-1g.10gb}
IMAGE=${IMAGE:-nvidia/cuda:12.4.1-base-ubuntu22.04}
inject=()
if [ -n "${MIGRUN_INJECT:-}" ]; then inject=(--inject "$MIGRUN_INJECT"); fi

fail() { echo "cuda-check: FAILED: $*" >&2; exit 1; }

echo "== migrun -v --profile $PROFILE --rm $IMAGE nvidia-smi -L"
# shellcheck disable=SC2016 # $NVIDIA_VISIBLE_DEVICES is expanded inside the container
out=$("$MIGRUN" -v --profile "$PROFILE" "${inject[@]}" --rm "$IMAGE" \
  sh -c 'echo "NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"; nvidia-smi -L')
echo "$out"

uuid=$(printf '%s\n' "$out" | sed -n 's/^NVIDIA_VISIBLE_DEVICES=//p')
case "$uuid" in MIG-*) ;; *) fail "the container got NVIDIA_VISIBLE_DEVICES=$uuid, not a MIG UUID" ;; esac
devices=$(printf '%s\n' "$out" | grep -c 'UUID: MIG-' || true)
[ "$devices" = 1 ] || fail "nvidia-smi -L lists $devices MIG devices; expected exactly the leased one"
printf '%s\n' "$out" | grep -q "UUID: $uuid)" || fail "nvidia-smi -L does not list the leased $uuid"
if "$MIGRUN" status --json | grep "$uuid" >/dev/null; then
  fail "$uuid is still leased or still exists after the container exited (see \`migrun status\`)"
fi
echo "cuda-check: OK: the container saw only $uuid ($PROFILE), and the slice was released"
