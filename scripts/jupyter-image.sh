#!/usr/bin/env bash
# The Jupyter image the Jupyter tests and examples/jupyter-on-a-slice use, built from Debian's packages
# alone (no container registry is reachable): a Debian 12 root made with `debootstrap --variant=minbase`
# holding the classic notebook server (jupyter-notebook 6.4) and Debian's jupyterhub, whose
# `jupyterhub-singleuser` is what a hub's spawner runs, plus a user `jovyan` (uid 1000) to run them as.
#
#   jupyter-image.sh tarball   build the root if the cache lacks it; print the tarball's path
#   jupyter-image.sh import    the same, then `docker import` it as $IMAGE unless that engine already
#                              has it; print the image name
#
# The tarball is cached in $CACHE (default /var/cache/migrun-test) under a name keyed by the package
# list, the suite and this script's build steps, so a changed list builds a new one; a missing one is
# rebuilt. Builds are serialised with flock (parallel tests wait for one build) and written to a temp
# file renamed into place, so a killed build leaves no half tarball behind.
#
# Settings (environment): CACHE, MIRROR (default http://deb.debian.org/debian), DOCKER (the CLI; its
# DOCKER_HOST picks the engine), IMAGE (default migrun-demo/jupyter:<key>). Needs root and debootstrap.
set -euo pipefail

SUITE=bookworm
PACKAGES=(jupyter-notebook python3-notebook python3-ipykernel jupyterhub)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${CACHE:-/var/cache/migrun-test}
DOCKER=${DOCKER:-docker}

die() { echo "jupyter-image: $*" >&2; exit 1; }

# Bump when the build steps below change in a way the package list does not show.
RECIPE=2
key=$(printf '%s\n' "$SUITE" "$RECIPE" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
tarball="$CACHE/jupyter-root-$key.tar"
IMAGE=${IMAGE:-migrun-demo/jupyter:$key}

# Unmounts whatever a build mounted under $1 (debootstrap and apt leave /proc mounted when they fail),
# then removes it without crossing into another file system.
remove_root() {
  local m
  awk -v r="$1/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
  if awk -v r="$1/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
    echo "jupyter-image: something is still mounted under $1; left it there" >&2
    return
  fi
  rm -rf --one-file-system "$1" "$1.log"
}

build() {
  [ "$(id -u)" -eq 0 ] || die "building the image root needs root (debootstrap); run as root"
  command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/setup-test-host.sh as root"
  local root
  root=$(mktemp -d "$CACHE/jupyter-root.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this build's dir
  trap "remove_root '$root'; rm -f '$tarball.tmp'" EXIT
  echo "jupyter-image: debootstrap $SUITE, then ${PACKAGES[*]} (cached afterwards as $tarball)" >&2
  # minbase first, the packages with apt in the chroot after: debootstrap's own --include orders the
  # configuration of node packages (jupyterhub's proxy) wrongly and fails on them.
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; die "debootstrap failed (log above)"; }
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # No service may start inside the build root (jupyterhub ships one).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  mount -t proc proc "$root/proc"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${PACKAGES[@]}" >>"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; die "apt-get install ${PACKAGES[*]} in the image root failed (log above)"; }
  umount "$root/proc"
  chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash jovyan
  mkdir -p "$root/home/jovyan/work"
  chroot "$root" chown jovyan:jovyan /home/jovyan/work
  # What an image needs no more: the build's policy and resolver, package caches and lists, docs.
  rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  remove_root "$root"
  trap - EXIT
}

ensure_tarball() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/jupyter-root.lock"
  flock 9
  [ -s "$tarball" ] || build
  flock -u 9
}

import() {
  if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    return
  fi
  ensure_tarball
  "$DOCKER" import \
    --change 'USER jovyan' --change 'WORKDIR /home/jovyan' \
    --change 'ENV LANG=C.UTF-8 SHELL=/bin/bash PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["jupyter-notebook", "--ip=0.0.0.0", "--port=8888", "--no-browser"]' \
    "$tarball" "$IMAGE" >/dev/null
  echo "$IMAGE"
}

case "${1:-}" in
  tarball) ensure_tarball; echo "$tarball" ;;
  import) import ;;
  *) echo "usage: $0 tarball|import" >&2; exit 2 ;;
esac
