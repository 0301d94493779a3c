#!/usr/bin/env bash
# Jupyter on a MIG slice: run a notebook server on a 3g.40gb instance with its port published and a
# notebook folder mounted, show `migrun status` while it holds the slice, and free the slice with `docker stop`.
#
#   run.sh start    start the server (detached); prints its URL and `migrun status`
#   run.sh status   `migrun status` (the notebook's lease and the slot map)
#   run.sh stop     `docker stop` it, wait until migrun has released the slice, show `migrun status`
#   run.sh demo     start, status, wait for Enter, stop
#
# Settings (environment): PROFILE (3g.40gb), IMAGE (a CUDA Jupyter image), NAME, PORT (8888, bound to 127.0.0.1),
# WORKDIR (./notebooks, mounted at NOTEBOOK_DIR), TOKEN (random), NOTEBOOK_CMD (the server command), MIGRUN and
# DOCKER (the binaries), MIGRUN_INJECT (an --inject mode; default: migrun detects the NVIDIA toolkit),
# DOCKER_EXTRA (more docker run options, split on spaces).
set -euo pipefail

MIGRUN=${MIGRUN:-migrun}
DOCKER=${DOCKER:-docker}
PROFILE=${PROFILE:-3g.40gb}
IMAGE=${IMAGE:-quay.io/jupyter/pytorch-notebook:cuda12-latest}
NAME=${NAME:-jupyter-on-a-slice}
PORT=${PORT:-8888}
WORKDIR=${WORKDIR:-$PWD/notebooks}
NOTEBOOK_DIR=${NOTEBOOK_DIR:-/home/jovyan/work}
TOKEN=${TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
NOTEBOOK_CMD=${NOTEBOOK_CMD:-start-notebook.py --IdentityProvider.token=$TOKEN}
DOCKER_EXTRA=${DOCKER_EXTRA:-}

inject=()
if [ -n "${MIGRUN_INJECT:-}" ]; then inject=(--inject "$MIGRUN_INJECT"); fi

start() {
  mkdir -p "$WORKDIR"
  # migrun's flags first, then docker's: -d returns at once with the container id, and migrun starts a
  # watcher that releases the slice when the container exits (docker stop, a crash, anything).
  # shellcheck disable=SC2086 # DOCKER_EXTRA and NOTEBOOK_CMD are word lists on purpose
  cid=$("$MIGRUN" --profile "$PROFILE" "${inject[@]}" \
    -d --rm --name "$NAME" \
    -p "127.0.0.1:$PORT:8888" \
    -v "$WORKDIR:$NOTEBOOK_DIR" \
    $DOCKER_EXTRA "$IMAGE" $NOTEBOOK_CMD)
  echo "notebook server: container ${cid:0:12} ($NAME) on a $PROFILE slice"
  echo "open http://127.0.0.1:$PORT/?token=$TOKEN   (from elsewhere: ssh -L $PORT:127.0.0.1:$PORT this-host)"
  status
}

status() {
  "$MIGRUN" status
}

stop() {
  cid=$("$DOCKER" inspect --format '{{.Id}}' "$NAME")
  "$DOCKER" stop "$NAME" >/dev/null
  echo "stopped $NAME; waiting for migrun to release its slice"
  for _ in $(seq 100); do
    if ! "$MIGRUN" status --json | grep "$cid" >/dev/null; then
      echo "slice released"
      status
      return 0
    fi
    sleep 0.2
  done
  echo "the slice of container ${cid:0:12} is still leased after 20 s; see \`migrun status\` and run \`migrun gc\`" >&2
  return 1
}

case "${1:-demo}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  demo)
    start
    read -r -p "press Enter to stop the notebook server and free the slice " _ || true
    stop
    ;;
  *) echo "usage: $0 start|status|stop|demo" >&2; exit 2 ;;
esac
