#!/usr/bin/env bash
# Each OCI hook's own wall time, one by one, without a container engine (docs/benchmarks.md, runs L to P): N rounds
# (default 80) of `migrun hook prestart` (allocates 1g.10gb on a simulated h100-80gb:8, hook_inject = cdi, so the
# lease's CDI spec is written) then `migrun hook poststop` (ends it; the instance is destroyed by a background
# worker), then `migrun --version` (process start only) and `true`; prints the median of each. With `--count`, one
# more round runs under valgrind's callgrind and one under strace, and it prints each process's instruction and
# system-call counts instead (deterministic, for comparing builds on a noisy host). State and specs live in a
# temp dir on /dev/shm; nothing else is touched.
# Needs bash 5 ($EPOCHREALTIME); --count needs valgrind and strace.
#   usage: scripts/hook-calls.sh MIGRUN_BINARY [ROUNDS] [--count]
set -euo pipefail
M=$(realpath "${1:?usage: scripts/hook-calls.sh MIGRUN_BINARY [ROUNDS] [--count]}")
N=${2:-80}
COUNT=${3:-}
TRUE=$(command -v true)
[[ -x $TRUE && $TRUE == /* ]] || TRUE=/bin/true
D=$(mktemp -d /dev/shm/migrun-hook-calls.XXXXXX)
sleep 100000 &
HOLDER=$!
trap 'kill $HOLDER 2>/dev/null; rm -rf "$D"' EXIT
mkdir -p "$D/bundle/rootfs" "$D/cdi"
printf 'cdi_dir = "%s/cdi"\nhook_inject = "cdi"\n' "$D" >"$D/config.toml"
cat >"$D/config.orig" <<'JSON'
{"ociVersion":"1.0.2","process":{"args":["true"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs"},"annotations":{"migrun.profile":"1g.10gb"},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}
JSON
export MIGRUN_SIMULATE=h100-80gb:8 MIGRUN_STATE_DIR=$D/state MIGRUN_CONFIG=$D/config.toml
unset MIGRUN_NVML_LIB MIGRUN_LOG
# The hooks read the OCI state on stdin; the container's pid is a sleeping child, alive for the whole run.
state() { printf '{"ociVersion":"1.0.2","id":"c%s","status":"%s","pid":%d,"bundle":"%s/bundle","annotations":{"migrun.profile":"1g.10gb"}}' "$1" "$2" $HOLDER "$D"; }
us() { local t=${1/./}; echo $((10#$t)); }
pre=() post=() ver=() tru=()
round() {
    cp "$D/config.orig" "$D/bundle/config.json"
    local t0=$EPOCHREALTIME
    "$M" hook prestart <<<"$(state "$i" created)"
    local t1=$EPOCHREALTIME
    "$M" hook poststop <<<"$(state "$i" stopped)"
    local t2=$EPOCHREALTIME
    "$M" --version >/dev/null
    local t3=$EPOCHREALTIME
    "$TRUE"
    local t4=$EPOCHREALTIME
    pre+=($(($(us $t1) - $(us $t0)))) post+=($(($(us $t2) - $(us $t1))))
    ver+=($(($(us $t3) - $(us $t2)))) tru+=($(($(us $t4) - $(us $t3))))
    sleep 0.01 # the background destroy of this round's instance
}
for i in $(seq "$N"); do round; done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
if [[ $COUNT == --count ]]; then
    i=count
    cp "$D/config.orig" "$D/bundle/config.json"
    for stage in prestart poststop; do
        st=created
        [[ $stage == poststop ]] && st=stopped
        valgrind --tool=callgrind --callgrind-out-file="$D/$stage.cg" "$M" hook $stage <<<"$(state $i $st)" 2>/dev/null
    done
    valgrind --tool=callgrind --callgrind-out-file="$D/version.cg" "$M" --version >/dev/null 2>&1
    # The same once more under strace: system calls, the process's own (the background destroy excluded).
    i=strace
    cp "$D/config.orig" "$D/bundle/config.json"
    strace -c -o "$D/prestart.st" "$M" hook prestart <<<"$(state $i created)"
    strace -c -o "$D/poststop.st" "$M" hook poststop <<<"$(state $i stopped)"
    strace -c -o "$D/version.st" "$M" --version >/dev/null
    for c in prestart poststop version; do
        echo "$c: $(callgrind_annotate "$D/$c.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {print $1; exit}') instructions, $(awk '$NF == "total" {print $(NF-2); exit}' "$D/$c.st") system calls"
    done
else
    echo "medians of $N rounds (µs): prestart $(med "${pre[@]}"), poststop $(med "${post[@]}"), migrun --version $(med "${ver[@]}"), true $(med "${tru[@]}")"
fi
