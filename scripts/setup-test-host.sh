#!/usr/bin/env bash
# Prepare a Debian 12 machine to run migrun's tests with real container engines.
#
# Run as root. Idempotent: it installs only the Debian packages that are missing (checked with
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
PACKAGES=(runc containerd docker.io podman busybox-static iproute2 iptables uidmap curl tar coreutils)

log() { printf 'setup-test-host: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run me as root (sudo bash scripts/setup-test-host.sh)"
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

# Check what the tests need really is there (PATH may lack the sbin dirs under sudo -E etc.).
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
for b in runc dockerd docker docker-proxy containerd containerd-shim-runc-v2 ctr podman conmon ip tar sha256sum; do
  command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
done
busybox_ldd=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case "$busybox_ldd" in
  *"not a dynamic executable"*) ;;
  *) die "/bin/busybox is missing or not static: need package busybox-static ($busybox_ldd)" ;;
esac

# Rust: cargo must already be there (rustup or Debian's cargo); nothing is fetched from elsewhere.
if ! command -v cargo >/dev/null; then
  for d in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}" /root/.cargo/bin; do
    if [ -n "$d" ] && [ -x "$d/cargo" ]; then
      die "cargo is in $d but not on PATH: run with PATH=\"$d:\$PATH\" (e.g. sudo env PATH=\"\$PATH\" bash scripts/test.sh)"
    fi
  done
  die "cargo not found: install a Rust toolchain (Debian: apt-get install cargo, or rustup) first"
fi
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

log "ok: $(runc --version | head -1), $(dockerd --version), $(containerd --version | cut -d' ' -f1-3), $(podman --version), cargo $(cargo --version | cut -d' ' -f2)"
