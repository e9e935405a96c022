#!/bin/sh
# Run `dermground "$@"` as a Ray driver inside a running Ray cluster.
#
# A Ray driver needs a raylet on its own machine: ray.init() with a cluster address looks for a
# local node and fails when there is none. So this container first joins the cluster as a node
# that offers no CPUs or GPUs (nothing is scheduled here: it only drives the pipeline and writes
# to Qdrant), runs the command with DERMGROUND_RAY_ADDRESS pointing at the head, then leaves.
set -eu
head="${RAY_HEAD_ADDRESS:-ray-head:6379}"
ray start --address="$head" --num-cpus=0 --num-gpus=0 --disable-usage-stats
status=0
dermground "$@" || status=$?
ray stop || true
exit "$status"
