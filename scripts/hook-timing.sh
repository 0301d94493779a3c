#!/usr/bin/env bash
# What one pair of migrun OCI hooks costs on this host, without a container engine (docs/benchmarks.md,
# "Where a hook's time goes"). Alternates three shell-timed cases, N rounds each (default 300), and prints the
# median wall time of each: two `true` processes (any hook program), two `migrun --version` (process start
# only), and `migrun hook prestart` + `migrun hook poststop` for a bundle asking for 1g.10gb on a simulated
# h100-80gb:1 (state dir on /dev/shm; no GPU, no driver, nothing outside a temp dir is touched).
# Needs bash 5 ($EPOCHREALTIME). Usage: scripts/hook-timing.sh PATH/TO/migrun [N]
set -euo pipefail
M=$(realpath "${1:?migrun binary}")
N=${2:-300}
TRUE=$(command -v true)
[[ -x $TRUE && $TRUE == /* ]] || TRUE=/bin/true
D=$(mktemp -d /dev/shm/migrun-hook-timing.XXXXXX)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D/bundle"
cat >"$D/config.orig" <<'JSON'
{"ociVersion":"1.0.2","process":{"args":["true"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs"},"annotations":{"migrun.profile":"1g.10gb"}}
JSON
# The hooks read the OCI state on stdin; the pid is this shell's, alive for the whole run.
printf '{"ociVersion":"1.0.2","id":"timing","status":"created","pid":%d,"bundle":"%s/bundle"}' $$ "$D" >"$D/state.json"
export MIGRUN_SIMULATE=h100-80gb:1 MIGRUN_STATE_DIR=$D/state
unset MIGRUN_CONFIG MIGRUN_NVML_LIB MIGRUN_LOG

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
case_true() { "$TRUE"; "$TRUE"; }
case_start() { "$M" --version >/dev/null; "$M" --version >/dev/null; }
case_hooks() {
    "$M" hook prestart <"$D/state.json"
    "$M" hook poststop <"$D/state.json"
}
declare -A T=([true]="" [start]="" [hooks]="")
for ((i = 0; i < N + 5; i++)); do
    for c in true start hooks; do
        cp "$D/config.orig" "$D/bundle/config.json" # outside the timing: prestart rewrites it
        t0=$(now_us)
        "case_$c"
        t1=$(now_us)
        ((i < 5)) || T[$c]+="$((t1 - t0)) "
    done
done
# Nothing may be left behind: the last poststop released the lease and destroyed the instance.
S=$("$M" status --json)
if ! grep -q '"leases": \[\]' <<<"$S" || ! grep -q '"instances": \[\]' <<<"$S"; then
    echo "hook-timing: a lease or an instance was left behind" >&2
    exit 1
fi
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m/1000}'; }
echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); $N rounds"
printf '%-58s %s\n' "case (two processes each)" "median wall ms"
printf '%-58s %s\n' "true + true (any hook program)" "$(median <<<"${T[true]}")"
printf '%-58s %s\n' "migrun --version x2 (process start only)" "$(median <<<"${T[start]}")"
printf '%-58s %s\n' "migrun hook prestart + poststop (create + destroy, sim)" "$(median <<<"${T[hooks]}")"
