#!/usr/bin/env bash
# Prepare a Debian 12 machine to build migrun and run its tests with real container engines.
#
# Run as root (`bash scripts/setup-test-host.sh`; `sudo bash ...` from a user with sudo). Idempotent: it installs only the Debian packages that are missing (checked with
# `dpkg -s`) and runs `apt-get update` only when apt cannot find one of them. It downloads nothing
# by hand, installs nothing from outside Debian, and starts no daemon: the tests start their own
# private dockerd/containerd under /tmp and stop them again (tests/common/engines.rs).
set -euo pipefail

# What the engine tests use, and why:
#   runc, containerd, docker.io  dockerd 20.10 + containerd 1.6 (+ ctr, containerd-shim-runc-v2) + runc 1.1
#   podman                       podman 4.3 (pulls conmon, netavark, ...)
#   busybox-static               the statically linked /bin/busybox every test image/bundle is made of
#   iproute2                     `ip`: the private dockerd's own bridge
#   iptables                     docker.io needs it installed (the tests run dockerd with --iptables=false)
#   uidmap                       newuidmap/newgidmap for podman
#   curl                         manual HTTP checks against published ports
#   tar, coreutils               image tarballs, sha256sum (essential, listed for completeness)
#   gcc, libc6-dev               the linker and C runtime rustc links with (and the `cc` crate); a
#                                fresh Debian 12 lacks both, and rustup does not bring them
#   git                          tests/fresh_clone.rs clones the repository
#   sudo                         tests/sudo_rule.rs runs migrun through a real sudoers rule
#   prometheus-node-exporter     tests/metrics_node_exporter.rs serves migrun's metrics textfile through it
#   slurmctld, slurmd,           tests/slurm_cluster.rs starts a private Slurm 22.05 cluster (controller, one
#   slurm-client, munge          slurmd per compute node in its own netns, munged for auth); no daemon is enabled
#   libslurm-dev, libclang-dev   crates/migrun-spank: the slurm-spank crate runs bindgen (libclang) on spank.h
#   systemd                      systemd-analyze verify (tests/package_deb.rs checks the package's units) and
#                                systemd-tmpfiles (the package's postinst); nothing is booted or started
#   debootstrap                  tests/jupyter.rs: the Debian root of the Jupyter image (scripts/jupyter-image.sh)
#   jupyterhub, node-configurable-http-proxy, python3-docker, python3-escapism
#                                tests/jupyter.rs: the real hub, its proxy, and DockerSpawner's deps (DockerSpawner
#                                itself is pinned from PyPI by scripts/jupyterhub-env.sh)
#   python3-venv                 the venv DockerSpawner is installed into
#   python3-websocket            tests/jupyter.rs: the kernel-protocol client that runs a cell
PACKAGES=(sudo runc containerd docker.io podman busybox-static iproute2 iptables uidmap curl tar coreutils
  gcc libc6-dev git prometheus-node-exporter slurmctld slurmd slurm-client munge libslurm-dev libclang-dev
  debootstrap jupyterhub node-configurable-http-proxy python3-docker python3-escapism python3-venv python3-websocket systemd)

# `--quickstart` (scripts/quickstart.sh, the README's first command): only what building migrun and its Docker
# demo need. Slurm, JupyterHub, node-exporter, podman and cargo-deb are the test suite's, and a newcomer's first
# command should not wait for them.
QUICK_PACKAGES=(runc containerd docker.io busybox-static iproute2 iptables curl tar coreutils gcc libc6-dev)
quick=0
case "${1:-}" in
  "") ;;
  --quickstart) quick=1; PACKAGES=("${QUICK_PACKAGES[@]}") ;;
  *) printf 'setup-test-host: unknown argument %s (the only one is --quickstart)\n' "$1" >&2; exit 2 ;;
esac

log() { printf 'setup-test-host: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run me as root: as root, bash scripts/setup-test-host.sh; as a user with sudo, sudo bash scripts/setup-test-host.sh"
[ -r /etc/debian_version ] || die "this script supports Debian (12) only"

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

# Never let a package's postinst start a daemon (docker.io and containerd would start system ones):
# a policy-rc.d that denies every start, only for the duration of the install, only if none exists.
policy=/usr/sbin/policy-rc.d
our_policy=0
cleanup() { if [ "$our_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  need_update=0
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
  done
  if [ "$need_update" = 1 ]; then
    log "apt-get update (package lists lack a candidate)"
    apt-get update
  fi
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from migrun scripts/setup-test-host.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    our_policy=1
  fi
  if ! apt-get install -y "${missing[@]}"; then
    [ "$need_update" = 0 ] || die "apt-get install ${missing[*]} failed"
    log "install failed with the current package lists: apt-get update and retry"
    apt-get update
    apt-get install -y "${missing[@]}"
  fi
  cleanup
  our_policy=0
else
  log "all Debian packages present"
fi
# Debian's jupyterhub enables a system hub (port 8000, all addresses) for the next boot; the tests start
# their own hubs on loopback and a bridge, so a test host runs none.
if [ -d /run/systemd/system ] && systemctl is-enabled jupyterhub.service >/dev/null 2>&1; then
  systemctl disable --now jupyterhub.service >/dev/null 2>&1 || log "could not disable jupyterhub.service"
fi

# Check what the tests need really is there (PATH may lack the sbin dirs under sudo -E etc.).
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ "$quick" = 1 ]; then
  for b in runc dockerd docker docker-proxy containerd ip tar; do
    command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
  done
else
  for b in runc dockerd docker docker-proxy containerd containerd-shim-runc-v2 ctr podman conmon ip tar sha256sum sudo visudo runuser git \
    slurmctld slurmd slurmstepd srun sbatch squeue scancel sinfo munged mungekey nsenter; do
    command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
  done
  # The operations tests (metrics textfile, the .deb): node-exporter, the units' verifier, private mounts.
  for b in prometheus-node-exporter systemd-analyze unshare; do
    command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
  done
fi
busybox_ldd=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case "$busybox_ldd" in
  *"not a dynamic executable"*) ;;
  *) die "/bin/busybox is missing or not static: need package busybox-static ($busybox_ldd)" ;;
esac

# Rust: cargo and rustc must already be there, at least Cargo.toml's rust-version. Nothing is fetched
# from elsewhere: installing a toolchain is the user's step, and Debian 12's own cargo/rustc (1.63)
# is older than rust-version, so the way is rustup (README.md, Prerequisites).
manifest="$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml"
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$manifest" | head -n 1)
[ -n "$need" ] || die "no rust-version in $manifest"
# The same line as README.md's Prerequisites (tests/fresh_clone.rs checks the README's copy).
prereq="Prerequisites: Rust $need or newer (rust-version in Cargo.toml; Debian 12's cargo 1.63 is too old) with rustfmt and clippy, from rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy && . \"\$HOME/.cargo/env\""

# version_at_least HAVE NEED: numeric, field by field (1.100 > 1.85); a suffix such as -nightly is ignored.
version_at_least() {
  local -a have need
  IFS=. read -r -a have <<<"${1%%-*}"
  IFS=. read -r -a need <<<"${2%%-*}"
  local i h n
  for i in 0 1 2; do
    h=${have[i]:-0} n=${need[i]:-0}
    [[ $h =~ ^[0-9]+$ && $n =~ ^[0-9]+$ ]] || return 1
    if ((10#$h > 10#$n)); then return 0; fi
    if ((10#$h < 10#$n)); then return 1; fi
  done
  return 0
}

if ! command -v cargo >/dev/null; then
  for d in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}" /root/.cargo/bin; do
    if [ -n "$d" ] && [ -x "$d/cargo" ]; then
      die "cargo is in $d but not on PATH: run . \"$(dirname "$d")/env\" first, or with PATH=\"$d:\$PATH\" (e.g. sudo env PATH=\"\$PATH\" bash scripts/test.sh)"
    fi
  done
  die "cargo not found. $prereq"
fi
for tool in cargo rustc; do
  have=$("$tool" --version 2>/dev/null | cut -d' ' -f2)
  version_at_least "$have" "$need" || die "$tool ${have:-(no version)} ($(command -v "$tool")) is older than $need. $prereq"
done
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

if [ "$quick" = 1 ]; then
  log "ok (quickstart): $(runc --version | head -1), $(dockerd --version), cargo $(cargo --version | cut -d' ' -f2)"
  exit 0
fi

[ -r /usr/include/slurm/spank.h ] || die "/usr/include/slurm/spank.h missing after installing libslurm-dev"

# cargo-deb builds the .deb that tests/package_deb.rs installs and exercises; pinned, from crates.io, built
# once and kept in cargo's bin dir (reinstalled when missing or another version). A debug build: it packages
# one .deb per run, and an optimised build of its dependencies would add minutes to a fresh CI machine.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  log "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
  cargo install --locked --debug cargo-deb --version "$CARGO_DEB_VERSION"
fi

# The Debian 13 engine root (Docker 26, containerd 1.7, podman 5, crun) the engine tests also run against:
# built once per machine (about a minute), rebuilt when missing or when its package list changes.
bash "$(dirname "${BASH_SOURCE[0]}")/trixie-root.sh" build >/dev/null

log "ok: $(runc --version | head -1), $(dockerd --version), $(containerd --version | cut -d' ' -f1-3), $(podman --version), cargo $(cargo --version | cut -d' ' -f2)"
