#!/usr/bin/env bash
# Multi-node G-Rerank training (DeepSpeed ZeRO-3) with the DeepSpeed launcher.
#
#   deploy/launch_multinode.sh CONFIG [section.key=value ...]
#
# From the first node, by default: the launcher ssh-es (pdsh) into every host of $HOSTFILE and starts `slots` ranks
# on each. Without ssh between nodes, run it on every node with NO_SSH=1 NODE_RANK=<0..nodes-1>.
# Environment:
#   HOSTFILE     DeepSpeed hostfile (default deploy/hostfile)
#   MASTER_ADDR  address of node 0, reachable from every node (default: the first host in $HOSTFILE)
#   MASTER_PORT  rendezvous port on node 0 (default 29500)
#   NO_SSH=1, NODE_RANK=r   start this node's ranks only (deepspeed --no_ssh)
#   DEEPSPEED    launcher executable (default: deepspeed on PATH)
# run.run_dir must be on a filesystem that every node sees (checkpoints are written by rank 0, read by all).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [section.key=value ...]" >&2
  exit 2
fi
config=$1
shift
hostfile=${HOSTFILE:-deploy/hostfile}
master_addr=${MASTER_ADDR:-$(awk '!/^#/ && NF {print $1; exit}' "$hostfile")}
args=(--hostfile "$hostfile" --master_addr "$master_addr" --master_port "${MASTER_PORT:-29500}" --no_local_rank)
if [ "${NO_SSH:-0}" = 1 ]; then
  args+=(--no_ssh --node_rank "${NODE_RANK:?NO_SSH=1 needs NODE_RANK}")
fi
exec "${DEEPSPEED:-deepspeed}" "${args[@]}" --module gr_train.cli train --config "$config" runtime.engine=deepspeed "$@"
