#!/usr/bin/env bash
# Quickstart: on a fresh Debian machine, as root: install what is missing, build migrun, and run a
# container on a slice of a *simulated* H100 with a real Docker engine. Changes nothing on real GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-host.sh
cargo build --release --bin migrun
MIGRUN="$PWD/target/release/migrun"

work=$(mktemp -d /tmp/migrun-quickstart.XXXXXX)
export MIGRUN_SIMULATE=h100-80gb:1 MIGRUN_STATE_DIR="$work/state"

# Use the host's dockerd if one answers; otherwise start a private one for this demo.
if docker info >/dev/null 2>&1; then
  export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
else
  echo "== starting a private dockerd under $work"
  dockerd --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
    -H "unix://$work/docker.sock" --bridge none --iptables=false >"$work/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$work/docker.sock"
  trap 'kill "$(cat "$work/docker.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi

# No registry is needed: a busybox image from Debian's busybox-static.
if ! docker image inspect migrun-demo/busybox >/dev/null 2>&1; then
  root="$work/rootfs"; mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for t in sh echo env sleep cat true; do ln -sf busybox "$root/bin/$t"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import - migrun-demo/busybox >/dev/null
fi

echo "== the simulated GPU before"
"$MIGRUN" status
echo "== migrun --inject env --profile 3g.40gb --rm migrun-demo/busybox sh -c 'echo \$NVIDIA_VISIBLE_DEVICES'"
"$MIGRUN" --inject env --profile 3g.40gb --rm --pull never migrun-demo/busybox \
  sh -c 'echo "inside the container: NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"'
echo "== the simulated GPU after (the slice was released)"
"$MIGRUN" status

echo "== detached: migrun --inject env --profile 1g.10gb -d migrun-demo/busybox sleep 60"
cid=$("$MIGRUN" --inject env --profile 1g.10gb -d --pull never migrun-demo/busybox sleep 60)
"$MIGRUN" status
echo "== docker stop: the watcher migrun left behind releases the slice"
docker stop -t 1 "$cid" >/dev/null
for _ in $(seq 40); do "$MIGRUN" status | grep -q '^no leases' && break; sleep 0.25; done
"$MIGRUN" status
