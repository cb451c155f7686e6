#!/bin/sh
# Open MPI's remote-start agent for the namespace nodes of scripts/slurm-local.sh (as `ssh` is on
# a cluster): `mpirun --mca plm_rsh_agent scripts/netns-ssh.sh -H rlpnode1,rlpnode2 ...` runs
# each node's daemon inside that node's network namespace, under the node's host name. Root only.
#   netns-ssh.sh HOST COMMAND...
set -e
host=$1
shift
[ -e "/run/netns/$host" ] || { echo "error: netns-ssh: no node $host (start them with scripts/slurm-local.sh start --nodes 2)" >&2; exit 1; }
exec nsenter --net="/run/netns/$host" unshare --uts sh -c "hostname $host && $*"
