#!/usr/bin/env bash
# Spark's GPU discovery script (spark.executor.resource.gpu.discoveryScript, config/cluster/variables.gpu.json):
# prints the GPUs this executor may use as {"name": "gpu", "addresses": ["0", "1"]}. YARN does not tell Spark which
# GPUs it assigned to a container; with YARN's GPU isolation (cgroups or Docker runtime) a container sees only its
# own GPUs, so listing what nvidia-smi sees is the assignment. Fails (and so fails the executor) without nvidia-smi
# or without a GPU.
set -euo pipefail
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' \r' | sed '/^$/d')
if [ -z "$indexes" ]; then
  echo "getGpusResources.sh: nvidia-smi lists no GPU" >&2
  exit 1
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$(printf '%s\n' "$indexes" | sed 's/.*/"&"/' | paste -sd, -)"
