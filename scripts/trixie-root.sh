#!/usr/bin/env bash
# The Debian 13 (trixie) engine root the engine tests run today's engines from: Docker 26, containerd 1.7,
# podman 5, runc and crun, built from Debian's packages with `debootstrap --variant=minbase` into a cached
# directory on the machine. Installed straight onto the Debian 12 host those packages would drag in a new
# libc; in a root of their own they run against the host's kernel through `run` below (a chroot in a
# private mount namespace; docs/engines.md says why a chroot and not a privileged container).
#
#   trixie-root.sh build    build the root if the cache lacks it or its package list changed; print its path
#   trixie-root.sh path     print the root's path (exit 1 with a one-line error when it is not built)
#   trixie-root.sh run [--bind DIR]... [--mount SRC:DST]... -- CMD [ARG]...
#                           run CMD from the root: a private mount namespace where /proc, /sys, /dev and
#                           /tmp are the host's (so sockets, state dirs and temp dirs under /tmp are shared
#                           with the host and the tests), /run is a private tmpfs (no two daemons share a
#                           default pid file or socket), and every --bind DIR (absolute) is the host's DIR
#                           at the same path (e.g. the repository, whose target/ holds migrun's binaries),
#                           and every --mount SRC:DST is the host's dir SRC at DST in the root (e.g. a
#                           test's CDI dir at /run/cdi: podman 5 reads CDI specs from no dir given by flag)
#
# The root lives in $CACHE/trixie-root (default /var/cache/migrun-test); a stamp file in it holds the hash
# of the suite, the package list and RECIPE, so a changed list builds a new root. Builds are serialised
# with flock and made in a temp dir renamed into place: a killed build leaves no half root behind.
# Settings (environment): CACHE, MIRROR (default http://deb.debian.org/debian). Needs root and debootstrap.
set -euo pipefail

SUITE=trixie
# What the engine tests run from the root, and why:
#   docker.io          dockerd 26 (CDI through daemon.json's features.cdi)
#   docker-cli         the docker CLI 26 (Debian 13 splits it out of docker.io)
#   docker-compose     the Compose v2 CLI plugin (a service naming a leased slice's CDI device)
#   containerd         containerd 1.7 + ctr + containerd-shim-runc-v2 (the shim through ctr)
#   podman             podman 5 (hooks.d and CDI), with conmon and netavark from its dependencies
#   runc, crun         both OCI runtimes podman 5 is tested with (docker and containerd use runc)
#   iptables           docker.io needs it installed (the tests run dockerd with --iptables=false)
#   python3-grpcio, python3-grpc-tools
#                      a CRI client without a kubelet (Debian 13 has no crictl): the CRI's api.proto
#                      (tests/fixtures/cri-api), compiled by grpc_tools, drives containerd's CRI (CDI) from
#                      tests/cri_client.py
PACKAGES=(docker.io docker-cli docker-compose containerd podman runc crun iptables
  python3-grpcio python3-grpc-tools)
# Bump when the build steps below change in a way the package list does not show.
RECIPE=1
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${CACHE:-/var/cache/migrun-test}
ROOT="$CACHE/trixie-root"
key=$(printf '%s\n' "$SUITE" "$RECIPE" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
STAMP=".migrun-trixie-root-stamp"

log() { printf 'trixie-root: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

built() { [ "$(cat "$ROOT/$STAMP" 2>/dev/null || true)" = "$key" ]; }

# Unmounts whatever a build mounted under $1 (debootstrap and apt leave /proc mounted when they fail),
# then removes it without crossing into another file system.
remove_root() {
  local m
  awk -v r="$1/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
  if awk -v r="$1/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
    log "something is still mounted under $1; left it there"
    return
  fi
  rm -rf --one-file-system "$1" "$1.log"
}

build() {
  [ "$(id -u)" -eq 0 ] || die "building the Debian 13 root needs root (debootstrap, chroot); run as root"
  command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/setup-test-host.sh as root"
  # debootstrap checks trixie's Release file against the host's keyring; Debian 12's
  # debian-archive-keyring carries Debian 13's keys from its 2023.3+deb12u2 update on.
  local trixie_key=/usr/share/keyrings/debian-archive-trixie-stable.gpg
  if [ ! -e "$trixie_key" ]; then
    log "$trixie_key missing: updating debian-archive-keyring"
    DEBIAN_FRONTEND=noninteractive apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y debian-archive-keyring >&2 || true
  fi
  [ -e "$trixie_key" ] ||
    die "$trixie_key missing: apt-get update && apt-get install debian-archive-keyring (Debian 12's update carries Debian 13's keys)"
  local tmp start
  start=$(date +%s)
  tmp=$(mktemp -d "$CACHE/trixie-root.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this build's dir
  trap "remove_root '$tmp'" EXIT
  log "debootstrap $SUITE, then ${PACKAGES[*]} into $ROOT (once per machine; log in $tmp.log)"
  debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 ||
    { tail -20 "$tmp.log" >&2; die "debootstrap $SUITE failed (log above): check that $MIRROR is reachable"; }
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  # No service may start inside the build root (docker.io and containerd ship units and init scripts).
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 755 "$tmp/usr/sbin/policy-rc.d"
  mount -t proc proc "$tmp/proc"
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${PACKAGES[@]}" >>"$tmp.log" 2>&1 ||
    { tail -20 "$tmp.log" >&2; die "apt-get install ${PACKAGES[*]} in the $SUITE root failed (log above)"; }
  umount "$tmp/proc"
  rm -f "$tmp/usr/sbin/policy-rc.d"
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
    "$tmp"/usr/share/locale/*
  printf '%s\n' "$key" >"$tmp/$STAMP"
  # Replace an outdated root: move it aside first so the rename of the new one is atomic.
  if [ -e "$ROOT" ]; then
    local old
    old=$(mktemp -d "$CACHE/trixie-root.old.XXXXXX")
    mv "$ROOT" "$old/root"
    remove_root "$old"
  fi
  mv "$tmp" "$ROOT"
  rm -f "$tmp.log"
  trap - EXIT
  log "built $ROOT in $(($(date +%s) - start)) s"
}

ensure() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/trixie-root.lock"
  flock 9
  built || build
  flock -u 9
}

run() {
  local binds=() mounts=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --bind) [ $# -ge 2 ] || die "--bind needs a directory"
        case "$2" in /*) ;; *) die "--bind $2: give an absolute path" ;; esac
        binds+=("$2"); shift 2 ;;
      --mount) [ $# -ge 2 ] || die "--mount needs SRC:DST"
        case "$2" in /*:/*) ;; *) die "--mount $2: give SRC:DST, both absolute" ;; esac
        mounts+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) die "run: unknown argument $1 (usage: run [--bind DIR]... [--mount SRC:DST]... -- CMD [ARG]...)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command (usage: run [--bind DIR]... [--mount SRC:DST]... -- CMD [ARG]...)"
  built || die "the Debian 13 root $ROOT is missing or outdated: run scripts/setup-test-host.sh as root"
  # Mount points for the binds must exist in the root; an empty dir there is harmless and kept.
  local b
  for b in "${binds[@]}"; do mkdir -p "$ROOT$b"; done
  for b in "${mounts[@]}"; do [ -d "${b%%:*}" ] || die "--mount $b: ${b%%:*} is not a directory"; done
  # The mounts are made in a new mount namespace (private: nothing propagates back to the host) and the
  # command replaces the shell, so a signal to the returned pid reaches the engine itself.
  exec unshare --mount --propagation private -- /bin/sh -euc '
    root=$1; shift
    # The root a mount of its own: dockerd (chrootarchive) and runc remount "/" of their namespaces,
    # which fails on a plain directory.
    mount --bind "$root" "$root"
    mount --rbind /proc "$root/proc"
    mount --rbind /sys "$root/sys"
    # A Debian 12 host boots cgroup v1 with the v2 hierarchy beside it ("hybrid"), which crun refuses;
    # a Debian 13 host has v2 alone. The engines here see the v1 controllers only (runc, dockerd and
    # podman run on either), so crun runs as it would on a v1 host.
    if grep -q " $root/sys/fs/cgroup/unified cgroup2 " /proc/self/mounts; then
      umount -l "$root/sys/fs/cgroup/unified"
    fi
    mount --rbind /dev "$root/dev"
    mount --rbind /tmp "$root/tmp"
    mount -t tmpfs -o mode=755 tmpfs "$root/run"
    mkdir -p "$root/run/lock"
    n=$1; shift
    while [ "$n" -gt 0 ]; do mount --rbind "$1" "$root$1"; shift; n=$((n - 1)); done
    n=$1; shift
    while [ "$n" -gt 0 ]; do
      mkdir -p "$root${1#*:}"; mount --rbind "${1%%:*}" "$root${1#*:}"; shift; n=$((n - 1))
    done
    exec chroot "$root" /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
  ' trixie-run "$ROOT" "${#binds[@]}" "${binds[@]}" "${#mounts[@]}" "${mounts[@]}" "$@"
}

case "${1:-}" in
  build) ensure; echo "$ROOT" ;;
  path) built || die "the Debian 13 root $ROOT is missing or outdated: run scripts/setup-test-host.sh as root"
    echo "$ROOT" ;;
  run) shift; run "$@" ;;
  *) die "usage: $0 build|path|run [--bind DIR]... -- CMD [ARG]..." ;;
esac
