#!/usr/bin/env bash
# A throwaway Slurm cluster on this machine, to run `srun` launches of rlp for real (tests/mpi.rs
# runs its srun tests against it). Debian's Slurm 22.05 and MUNGE; as root, or through sudo (it
# installs packages and starts daemons and, for several nodes, network namespaces). Jobs run as
# whoever calls srun.
#
#   scripts/slurm-local.sh start [--nodes N]   install if missing, start munged, slurmctld and
#                                              one slurmd per node; prints the SLURM_CONF to export
#   scripts/slurm-local.sh stop                stop the daemons and remove the namespaces
#
# --nodes 1 (default): one node, this machine, on 127.0.0.1.
# --nodes N > 1: N nodes, each a network namespace with its own address (10.231.0.1 ... on a
#   bridge) and its own host name (a UTS namespace), so MPI sees N hosts and talks TCP between
#   them, as on a cluster; the file system is shared, as a cluster's network file system is.
#   Every node is given all of this machine's CPUs.
# State, logs and slurm.conf live in $RLP_SLURM_DIR (default /tmp/rlp-slurm), wiped at start.
set -Eeuo pipefail
DIR="${RLP_SLURM_DIR:-/tmp/rlp-slurm}"
CONF="$DIR/slurm.conf"
NET_PREFIX=10.231.0
BRIDGE=rlpslurm0
PORT_CTLD=16817
PORT_SLURMD=16818
NODE_TMP=/var/tmp/rlp-slurm-node

die() { echo "error: slurm-local: $*" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "must run as root, or with sudo available (it starts daemons and namespaces)"
    exec sudo RLP_SLURM_DIR="$DIR" bash "$0" "$@"
fi
trap 'echo "error: slurm-local: failed at line $LINENO: $BASH_COMMAND (logs in $DIR/log)" >&2' ERR

install_if_missing() {
    local missing=()
    for p in slurmctld slurmd slurm-client munge iproute2; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "no apt-get here; install Slurm (slurmctld, slurmd, srun) and MUNGE by hand"
    echo "slurm-local: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    if ! munge -n >/dev/null 2>&1; then
        mkdir -p /run/munge
        chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
        die "munged did not start (see /var/log/munge/munged.log)"
    fi
}

node_name() { echo "rlpnode$1"; }

stop() {
    for f in "$DIR"/slurmd-*.pid "$DIR"/slurmctld.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.5
    pkill -f "slurmd -f $CONF" 2>/dev/null || true
    pkill -f "slurmctld -f $CONF" 2>/dev/null || true
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^rlpnode' || true); do
        ip netns delete "$ns" || true
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
}

start() {
    local nodes=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="$2"; shift 2 ;;
            *) die "unknown argument $1 (usage: slurm-local.sh start [--nodes N] | stop)" ;;
        esac
    done
    [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes takes a positive number, not '$nodes'"
    install_if_missing
    stop
    rm -rf "$DIR"
    mkdir -p "$DIR/state" "$DIR/log" "$NODE_TMP"
    start_munge

    local cpus ctld_host ctld_addr nodelines=() names=()
    cpus=$(nproc)
    if [ "$nodes" -eq 1 ]; then
        ctld_host=$(hostname -s)
        ctld_addr=127.0.0.1
        nodelines+=("NodeName=$ctld_host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN")
        names+=("$ctld_host")
    else
        command -v unshare >/dev/null || die "several nodes need unshare (util-linux)"
        ctld_host=$(hostname -s)
        ctld_addr=$NET_PREFIX.254
        ip link add "$BRIDGE" type bridge
        ip addr add "$ctld_addr/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
        for i in $(seq "$nodes"); do
            local n; n=$(node_name "$i")
            ip netns add "$n"
            ip link add "veth-$n" type veth peer name eth0 netns "$n"
            ip link set "veth-$n" master "$BRIDGE" up
            ip -n "$n" addr add "$NET_PREFIX.$i/24" dev eth0
            ip -n "$n" link set eth0 up
            ip -n "$n" link set lo up
            nodelines+=("NodeName=$n NodeAddr=$NET_PREFIX.$i NodeHostname=$n CPUs=$cpus State=UNKNOWN")
            names+=("$n")
        done
    fi
    local nodelist
    nodelist=$(IFS=,; echo "${names[*]}")
    {
        echo "# written by scripts/slurm-local.sh: a throwaway cluster for rlp's srun tests"
        echo "ClusterName=rlplocal"
        echo "SlurmctldHost=$ctld_host($ctld_addr)"
        echo "SlurmctldPort=$PORT_CTLD"
        echo "SlurmdPort=$PORT_SLURMD"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "SlurmUser=root"
        echo "MpiDefault=none"
        echo "ProctrackType=proctrack/pgid"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "ReturnToService=2"
        echo "TmpFS=$NODE_TMP"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool-%n"
        echo "SlurmctldPidFile=$DIR/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/slurmd-%n.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        printf '%s\n' "${nodelines[@]}"
        echo "PartitionName=local Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8"
    } >"$CONF"
    echo "PMIxCliTmpDirBase=$NODE_TMP" >"$DIR/mpi.conf"

    slurmctld -f "$CONF"
    if [ "$nodes" -eq 1 ]; then
        mkdir -p "$DIR/spool-$ctld_host"
        slurmd -f "$CONF"
    else
        for n in "${names[@]}"; do
            # Its own network and host name: MPI on this node sees a host of its own. (nsenter, not
            # `ip netns exec`, which remounts /sys and hides the cgroup file system slurmd reads.)
            # Node-local temporary space too (PMIx keeps per-step directories there, named alike
            # on every node): a private mount of $DIR/tmp-NODE on $NODE_TMP.
            mkdir -p "$DIR/spool-$n" "$DIR/tmp-$n"
            nsenter --net="/run/netns/$n" unshare --uts --mount --propagation private sh -c \
                "hostname $n && mount --bind $DIR/tmp-$n $NODE_TMP && exec slurmd -f $CONF -N $n"
        done
    fi
    for _ in $(seq 100); do
        if [ "$(SLURM_CONF=$CONF sinfo -h -o '%t' 2>/dev/null | sort -u)" = "idle" ] &&
            [ "$(SLURM_CONF=$CONF sinfo -h -o '%D' 2>/dev/null)" = "$nodes" ]; then
            echo "slurm-local: $nodes node(s) up ($nodelist, $cpus CPUs each); export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.2
    done
    SLURM_CONF=$CONF sinfo >&2 || true
    tail -n 20 "$DIR"/log/*.log >&2 || true
    die "the cluster did not come up within 20 s (logs above, in $DIR/log)"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop; echo "slurm-local: stopped" ;;
    *) die "usage: slurm-local.sh start [--nodes N] | stop" ;;
esac
