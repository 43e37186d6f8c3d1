#!/usr/bin/env bash
# Start one node of a Ray cluster for `bilevel serve --backend ray` (README#ray).
#
#   deploy/ray/node.sh head   [--port 6379]                 # the head: no job slots
#   deploy/ray/node.sh worker HEAD:6379 [--slots N] [--gpus-per-slot G]
#
# A worker is a host prepared like a single-host deployment: Docker with gVisor (runsc)
# registered, the sandbox image built from the SAME checkout (its tag is a hash of its
# inputs, so `bilevel image build` gives the controller's tag; or `docker save | docker
# load` it), and this checkout installed with `pip install -e '.[ray]'`. The script
# refuses to advertise the `bilevel_sandbox` resource until all of that holds, so the
# controller only ever schedules jobs onto prepared nodes. Run it as the user that owns
# the Docker socket; that user is root-equivalent on this host (see README#ray, trust).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${BILEVEL_PYTHON:-.venv/bin/python}
RAY=${BILEVEL_RAY:-.venv/bin/ray}
role=${1:?usage: node.sh head|worker HEAD:PORT [--slots N] [--gpus-per-slot G]}
shift
export RAY_USAGE_STATS_ENABLED=0

if [ "$role" = head ]; then
  port=6379
  [ "${1:-}" = --port ] && port=$2
  # The head takes no job slots; run the controller here (a Ray driver needs a local
  # raylet), or on another host that joins with `node.sh worker HEAD --slots 0`.
  exec "$RAY" start --head --port "$port" --include-dashboard=false \
    --resources '{}' --disable-usage-stats
fi

[ "$role" = worker ] || { echo "unknown role $role" >&2; exit 2; }
head=${1:?worker needs HEAD:PORT}
shift
slots=""
gpus_per_slot=1
while [ $# -gt 0 ]; do
  case "$1" in
    --slots) slots=$2; shift 2 ;;
    --gpus-per-slot) gpus_per_slot=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ -z "$slots" ]; then
  slots=$(( gpus > 0 ? gpus / gpus_per_slot : 1 ))
fi

if [ "$slots" -gt 0 ]; then
  docker info --format '{{json .Runtimes}}' | grep -q runsc || {
    echo "runsc is not registered with Docker on this host (README#gvisor)" >&2; exit 1; }
  docker info --format '{{json .Runtimes}}' | grep -q -- '--oci-seccomp' || {
    echo "runsc is registered without --oci-seccomp: gVisor would ignore the sandbox's" \
         "seccomp profile (README#gvisor)" >&2; exit 1; }
  tag=$("$PY" -c 'import docker
from controller.sandbox.image import ImageRecipe, image_tag
print(image_tag(docker.from_env(), ImageRecipe(), build_base=False)[0])' 2>/dev/null || true)
  if [ -z "$tag" ] || ! docker image inspect "$tag" >/dev/null 2>&1; then
    echo "the sandbox image ${tag:-?} of this checkout is not on this host: run" \
         "\`bilevel image build\` (or docker load it) first" >&2
    exit 1
  fi
fi
resources="{\"bilevel_sandbox\": $slots}"
[ "$slots" -eq 0 ] && resources='{}'
exec "$RAY" start --address "$head" --num-gpus "$gpus" --resources "$resources" \
  --disable-usage-stats
