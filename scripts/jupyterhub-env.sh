#!/usr/bin/env bash
# The Python environment the JupyterHub tests run the hub in: Debian's jupyterhub 3.0 and
# configurable-http-proxy (scripts/setup-test-host.sh installs them) plus DockerSpawner from PyPI,
# pinned, in a venv that sees Debian's packages (--system-site-packages) and installs nothing else
# (--no-deps: docker and escapism come from Debian too).
#
#   jupyterhub-env.sh    print the venv's python (build the venv first if the cache lacks it)
#
# The venv lives in $CACHE (default /var/cache/migrun-test) under a name keyed by the pins; builds are
# serialised with flock and made in a temp dir renamed into place, so a killed build leaves nothing
# half-made. Settings (environment): CACHE, PYTHON (default /usr/bin/python3, Debian's: the one
# jupyterhub is installed for).
set -euo pipefail

PINS=(dockerspawner==13.0.0)
CACHE=${CACHE:-/var/cache/migrun-test}
PYTHON=${PYTHON:-/usr/bin/python3}

die() { echo "jupyterhub-env: $*" >&2; exit 1; }

for m in jupyterhub docker escapism; do
  "$PYTHON" -c "import $m" 2>/dev/null || die "$PYTHON cannot import $m: run scripts/setup-test-host.sh as root"
done
key=$(printf '%s\n' "$("$PYTHON" --version)" "${PINS[@]}" | sha256sum | cut -c1-12)
venv="$CACHE/jupyterhub-venv-$key"

mkdir -p "$CACHE"
exec 9>"$CACHE/jupyterhub-venv.lock"
flock 9
if ! "$venv/bin/python" -c "import dockerspawner" 2>/dev/null; then
  rm -rf "$venv"
  tmp=$(mktemp -d "$CACHE/jupyterhub-venv.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this build's dir
  trap "rm -rf '$tmp'" EXIT
  # The venv's own pip (ensurepip, from python3-venv's wheels): a fresh Debian has no python3-pip.
  "$PYTHON" -m venv --system-site-packages "$tmp" || die "python3 -m venv failed (package python3-venv)"
  "$tmp/bin/python" -m pip install --quiet --no-deps --disable-pip-version-check "${PINS[@]}" >&2 ||
    die "pip install ${PINS[*]} failed (PyPI unreachable?)"
  mv "$tmp" "$venv"
  trap - EXIT
fi
flock -u 9
echo "$venv/bin/python"
