#!/bin/bash
# The runtime shim's engine calls timed one by one against runc's own (issue 17): `create --pid-file`, `start`,
# `delete --force` of a busybox bundle asking for 1g.10gb (hook_inject = cdi, simulator h100-80gb:1), alternating
# with the same calls of runc on a plain bundle; prints each call's median paired difference. Every directory lives
# under DIR (default /dev/shm: on a real host migrun's state, the CDI specs and runc's state are all under /run,
# a tmpfs). Needs root, runc and busybox on PATH, python3.
#   usage: scripts/shim-calls.sh MIGRUN_BINARY [ROUNDS] [DIR]
set -eu
MIGRUN=$(readlink -f "${1:?usage: scripts/shim-calls.sh MIGRUN_BINARY [ROUNDS] [DIR]}")
N=${2:-60}
D=$(mktemp -d "${3:-/dev/shm}/migrun-shim-calls.XXXXXX")
trap 'runc --root "$D/root" list -q 2>/dev/null | xargs -r -n1 runc --root "$D/root" delete --force; rm -rf "$D"' EXIT
mkdir -p "$D/b/rootfs/bin"
cp "$(command -v busybox)" "$D/b/rootfs/bin/"
ln -s busybox "$D/b/rootfs/bin/true"
(cd "$D/b" && runc spec && python3 - <<'P'
import json
c = json.load(open('config.json'))
c['process']['args'] = ['true']
c['process']['terminal'] = False
json.dump(c, open('config.plain.json', 'w'))
c['annotations'] = {'migrun.profile': '1g.10gb'}
json.dump(c, open('config.ask.json', 'w'))
P
)
cp -a "$D/b" "$D/plain"
cp "$D/b/config.ask.json" "$D/b/config.orig.json"
cp "$D/plain/config.plain.json" "$D/plain/config.orig.json"
printf 'runtime = "%s"\nhook_inject = "cdi"\n' "$(command -v runc)" > "$D/cfg.toml"
ln -s "$MIGRUN" "$D/migrun-runtime"
export MIGRUN_STATE_DIR=$D/state MIGRUN_SIMULATE=h100-80gb:1 MIGRUN_CONFIG=$D/cfg.toml
one() {
    local prog=$1 b=$2 id=c$RANDOM$RANDOM t0 t1 t2 t3
    cp "$b/config.orig.json" "$b/config.json"
    t0=$EPOCHREALTIME; "$prog" --root "$D/root" create --bundle "$b" --pid-file "$b/init.pid" "$id" </dev/null >/dev/null 2>&1
    t1=$EPOCHREALTIME; "$prog" --root "$D/root" start "$id" </dev/null >/dev/null 2>&1
    t2=$EPOCHREALTIME; "$prog" --root "$D/root" delete --force "$id" </dev/null >/dev/null 2>&1
    t3=$EPOCHREALTIME; echo "$t0 $t1 $t2 $t3"
}
for _ in $(seq "$N"); do
    echo "$(one runc "$D/plain") $(one "$D/migrun-runtime" "$D/b")"
done | python3 -c '
import sys, statistics as st
rows = []
for line in sys.stdin:
    v = list(map(float, line.split()))
    r = [(v[k + 1] - v[k]) * 1000 for k in range(3)]
    s = [(v[k + 5] - v[k + 4]) * 1000 for k in range(3)]
    rows.append(r + s)
for k, n in enumerate(["create --pid-file", "start", "delete --force"]):
    d = [x[3 + k] - x[k] for x in rows]
    print(f"{n}: runc {st.median(x[k] for x in rows):.2f} ms, shim {st.median(x[3 + k] for x in rows):.2f} ms, median paired difference {st.median(d):+.2f} ms")
t = [sum(x[3:]) - sum(x[:3]) for x in rows]
print(f"all three: median paired difference {st.median(t):+.2f} ms ({len(rows)} rounds)")'
sleep 1
leases=$("$MIGRUN" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["leases"]))')
echo "leases left: $leases"
