#!/usr/bin/env bash
# Submit a dataset build to a running Ray cluster (see docs/cluster.md).
#
#   deploy/submit.sh manifests/full.toml s3://my-bucket/phieat/full [extra build options]
#
# RAY_ADDRESS must point at the cluster's job server, e.g. http://head:8265.
set -euo pipefail
spec="${1:?usage: deploy/submit.sh SPEC OUTPUT_URL [build options]}"
output="${2:?usage: deploy/submit.sh SPEC OUTPUT_URL [build options]}"
shift 2
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster job server, e.g. http://head:8265}"
cd "$(dirname "$0")/.."   # runtime_env.yaml ships this checkout as the working_dir
exec ray job submit --address "$RAY_ADDRESS" \
    --runtime-env deploy/runtime_env.yaml \
    -- python -m render build "$spec" --output "$output" --no-progress "$@"
