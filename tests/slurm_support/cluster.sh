#!/usr/bin/env bash
# A private Slurm 22.05 cluster for tests/slurm_cluster.rs: munged, slurmctld on a bridge address, and one slurmd per
# compute node, each in its own network namespace (its own address, its own port 6818), each with its own migrun
# state dir and simulated GPUs. Everything lives under DIR; names carry TAG so parallel runs do not collide.
#
#   cluster.sh start DIR TAG SUBNET PORT PLUGIN MIGRUN NODE=SPEC[=GRES] ...   e.g. node1=h100-80gb:2=14
#   cluster.sh stop DIR                                                  stops what start recorded in DIR/teardown
#
# start writes DIR/slurm.conf (point SLURM_CONF at it) and DIR/<node>/migrun (that node's migrun state dir).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "cluster.sh: $*" >&2; exit 1; }

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  # Daemons first (by the pids they wrote), then the namespaces and the bridge.
  for pidfile in "$dir"/*/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -r "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pidfile in "$dir"/*/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -r "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  if [ -r "$dir/teardown" ]; then
    while read -r kind name; do
      case "$kind" in
        netns) ip netns pids "$name" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
               ip netns del "$name" 2>/dev/null || true ;;
        link) ip link del "$name" 2>/dev/null || true ;;
      esac
    done <"$dir/teardown"
  fi
}

wait_for() { # SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${t}s waiting for $what"
}

start() {
  local dir=$1 tag=$2 subnet=$3 port=$4 plugin=$5 migrun=$6; shift 6
  [ "$#" -ge 1 ] || die "start needs at least one NODE=SPEC"
  for b in munged mungekey slurmctld slurmd slurmstepd srun sinfo scontrol ip; do
    command -v "$b" >/dev/null || die "$b is missing: run scripts/setup-test-host.sh (Debian slurmd slurmctld slurm-client munge)"
  done
  mkdir -p "$dir"
  # Others may pass through (not list): a job submitted as another user (srun --uid) reaches munge's socket here.
  chmod 711 "$dir"
  : >"$dir/teardown"

  # munge: its own key and socket.
  mungekey --create --keyfile="$dir/munge.key" --force
  chmod 400 "$dir/munge.key"
  munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
  wait_for 10 munged test -S "$dir/munge.sock"

  # The bridge slurmctld listens on, and a veth into each node's namespace.
  local br="mrb$tag" ctl_ip="$subnet.1"
  ip link add "$br" type bridge
  echo "link $br" >>"$dir/teardown"
  ip addr add "$ctl_ip/24" dev "$br"
  ip link set "$br" up

  local host; host=$(hostname -s)
  local nodes=() i=1 spec
  {
    echo "ClusterName=mr$tag"
    echo "SlurmctldHost=$host($ctl_ip)"
    echo "SlurmctldPort=$port"
    echo "SlurmdPort=6818"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "AuthInfo=socket=$dir/munge.sock"
    echo "CredType=cred/munge"
    echo "StateSaveLocation=$dir/ctld"
    echo "SlurmdSpoolDir=$dir/%n/spool"
    echo "SlurmctldPidFile=$dir/slurmctld.pid"
    echo "SlurmdPidFile=$dir/%n/slurmd.pid"
    echo "SlurmctldLogFile=$dir/slurmctld.log"
    echo "SlurmdLogFile=$dir/%n/slurmd.log"
    echo "SlurmdDebug=debug"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SlurmdParameters=config_overrides"
    echo "GresTypes=mig"
    echo "PlugStackConfig=$dir/plugstack.conf"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "KillWait=2"
    echo "MinJobAge=5"
    echo "MessageTimeout=20"
    echo "SchedulerParameters=sched_interval=1"
  } >"$dir/slurm.conf"
  : >"$dir/gres.conf"
  for spec in "$@"; do
    local name=${spec%%=*} rest=${spec#*=}
    local sim=${rest%%=*} gres=""
    [ "$rest" != "$sim" ] && gres=${rest#*=}
    i=$((i + 1))
    local ns="mr$tag-$name" ip="$subnet.$i"
    ip netns add "$ns"
    echo "netns $ns" >>"$dir/teardown"
    ip link add "mrv$tag$i" type veth peer name "mrp$tag$i"
    echo "link mrv$tag$i" >>"$dir/teardown"
    ip link set "mrp$tag$i" netns "$ns"
    ip link set "mrv$tag$i" master "$br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev "mrp$tag$i"
    ip -n "$ns" link set "mrp$tag$i" up
    mkdir -p "$dir/$name/spool" "$dir/$name/migrun"
    echo "$sim" >"$dir/$name/simulate"
    if [ -n "$gres" ]; then
      echo "NodeName=$name NodeAddr=$ip CPUs=16 RealMemory=1000 Gres=mig:$gres State=UNKNOWN" >>"$dir/slurm.conf"
      echo "NodeName=$name Name=mig Count=$gres" >>"$dir/gres.conf"
    else
      echo "NodeName=$name NodeAddr=$ip CPUs=16 RealMemory=1000 State=UNKNOWN" >>"$dir/slurm.conf"
    fi
    nodes+=("$name")
  done
  local list; list=$(IFS=,; echo "${nodes[*]}")
  echo "PartitionName=test Nodes=$list Default=YES MaxTime=INFINITE State=UP" >>"$dir/slurm.conf"
  echo "required $plugin migrun=$migrun" >"$dir/plugstack.conf"

  slurmctld -f "$dir/slurm.conf" -i
  wait_for 20 slurmctld env SLURM_CONF="$dir/slurm.conf" scontrol ping
  for name in "${nodes[@]}"; do
    # nsenter, not `ip netns exec`: the latter mounts a fresh /sys without the cgroup fs slurmd 22.05 insists on.
  # The node's migrun settings reach slurmstepd (and so the plugin and the migrun it runs) through slurmd's env.
    nsenter --net="/run/netns/mr$tag-$name" env MIGRUN_SIMULATE="$(cat "$dir/$name/simulate")" \
      MIGRUN_STATE_DIR="$dir/$name/migrun" SLURM_CONF="$dir/slurm.conf" \
      slurmd -f "$dir/slurm.conf" -N "$name"
  done
  for name in "${nodes[@]}"; do
    wait_for 30 "node $name idle" bash -c "SLURM_CONF='$dir/slurm.conf' sinfo -h -n '$name' -o %t | grep -qx idle"
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: cluster.sh start DIR TAG SUBNET PORT PLUGIN MIGRUN NODE=SPEC[=GRES]... | stop DIR" ;;
esac
