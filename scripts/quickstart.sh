#!/usr/bin/env bash
# Quickstart: on a fresh Debian machine, as root: install what is missing, build migrun, and run a
# container on a slice of a *simulated* H100 with a real Docker engine, showing the slice (lease,
# placement, MIG UUID) while the container runs and its release afterwards. Changes nothing on real
# GPUs. Works from any cwd (`bash /path/to/scripts/quickstart.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-host.sh --quickstart
# A debug build: a few minutes on two cores, where the release profile's whole-program optimisation
# of ~200 crates takes far longer, and the test suite reuses it. (`cargo build --release` for use.)
cargo build --bin migrun
# `migrun` by name, so every command shown below is what a user would type after installing it.
target_dir=${CARGO_TARGET_DIR:-target}
PATH="$(cd "$target_dir/debug" && pwd):$PATH"
export PATH

work=$(mktemp -d /tmp/migrun-quickstart.XXXXXX)
export MIGRUN_SIMULATE=h100-80gb:1 MIGRUN_STATE_DIR="$work/state"

# show CMD: print a command as a user types it. shown CMD: print it, then run exactly those words.
show() { printf '\n$ %s\n' "$1"; }
shown() {
  show "$1"
  eval "$1"
}
say() { printf '\n# %s\n' "$*"; }

# Stop a private dockerd (if this script started one) and remove the demo's files. The data root is
# removed only once nothing is mounted under it any more, so a dockerd slow to exit cannot leave rm
# walking through a container's live mounts.
cleanup() {
  local pid
  pid=$(cat "$work/docker.pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  if ! grep -qF " $work/" /proc/mounts; then rm -rf "$work"; fi
}
trap cleanup EXIT

# Use the host's dockerd if one answers; otherwise start a private one for this demo.
if docker info >/dev/null 2>&1; then
  export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
else
  say "no dockerd answers: starting a private one under $work"
  dockerd --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
    -H "unix://$work/docker.sock" --bridge none --iptables=false >"$work/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$work/docker.sock"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { cat "$work/dockerd.log" >&2; echo "quickstart: dockerd did not start" >&2; exit 1; }
fi

# No registry is needed: a busybox image from Debian's busybox-static.
if ! docker image inspect migrun-demo/busybox >/dev/null 2>&1; then
  root="$work/rootfs"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for t in sh echo env sleep cat true; do ln -sf busybox "$root/bin/$t"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import - migrun-demo/busybox >/dev/null
fi

say "every command below sees one simulated H100: MIGRUN_SIMULATE=$MIGRUN_SIMULATE MIGRUN_STATE_DIR=$MIGRUN_STATE_DIR are exported. No instances, no leases yet"
shown "migrun status"

say "a container on a 3g.40gb slice, in the background (&) so that we can look while it runs"
shown "migrun --inject env --profile 3g.40gb --rm --pull never migrun-demo/busybox sh -c 'echo \"inside the container: NVIDIA_VISIBLE_DEVICES=\$NVIDIA_VISIBLE_DEVICES\"; sleep 5' &"
run_pid=$!
# Look once the container is up (its lease exists and docker lists it), not at a fixed time.
for _ in $(seq 80); do
  if migrun status | grep '^leases:' >/dev/null &&
    [ -n "$(docker ps -q --filter ancestor=migrun-demo/busybox)" ]; then
    break
  fi
  sleep 0.25
done
sleep 0.5 # let the container's line above reach the terminal first

say "while it runs: the instance at its placement (memory slices start:size), its MIG UUID, and the lease"
shown "migrun status"

say "when the container exits, migrun destroys the instance and ends the lease"
wait "$run_pid"
shown "migrun status"

say "detached (-d): migrun leaves a watcher that releases the slice when the container stops"
cmd="migrun --inject env --profile 1g.10gb -d --pull never migrun-demo/busybox sleep 60"
show "$cmd"
cid=$(eval "$cmd")
echo "$cid"
shown "migrun status"
shown "docker stop -t 1 ${cid:0:12}"
for _ in $(seq 40); do migrun status | grep '^no leases' >/dev/null && break; sleep 0.25; done
say "the watcher saw the container stop and released its slice"
shown "migrun status"
migrun status | grep '^no leases' >/dev/null || { echo "quickstart: the slice was not released" >&2; exit 1; }
