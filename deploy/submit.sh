#!/usr/bin/env bash
# Submit a dataset build to a running Ray cluster as a Ray job (see docs/cluster.md).
#
#   deploy/submit.sh manifests/full.toml s3://my-bucket/phieat/full [extra build options]
#
# RAY_ADDRESS must point at the cluster's job server, e.g. http://head:8265 (the head runs
# `ray start --head --include-dashboard=true`, which needs the cluster extra / ray[default]).
# The cluster's token (Ray's token authentication) is read from RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; RAY_AUTH_MODE=disabled only on a private network.
# PHIEAT_RUNTIME_ENV picks the runtime environment (default deploy/runtime_env.yaml: nodes
# run the project's image; deploy/runtime_env.pip.yaml installs the packages per node).
set -euo pipefail
spec="${1:?usage: deploy/submit.sh SPEC OUTPUT_URL [build options]}"
output="${2:?usage: deploy/submit.sh SPEC OUTPUT_URL [build options]}"
shift 2
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster job server, e.g. http://head:8265}"
# Ray's clients send the token only when told the cluster wants one (the head's default).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" != "disabled" && -z "${RAY_AUTH_TOKEN:-}" \
      && ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
    echo "submit.sh: no Ray token here: copy the head's (ray get-auth-token, run on the head)" \
         "into RAY_AUTH_TOKEN or ~/.ray/auth_token (docs/cluster.md, Authentication)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."   # the runtime environment ships this checkout as the working_dir
ray=ray
[[ -x .venv/bin/ray ]] && ray=.venv/bin/ray   # the checkout's own install (cron's PATH is bare)
exec "$ray" job submit --address "$RAY_ADDRESS" \
    --runtime-env "${PHIEAT_RUNTIME_ENV:-deploy/runtime_env.yaml}" \
    -- python -m render build "$spec" --output "$output" --no-progress "$@"
