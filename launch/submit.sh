#!/usr/bin/env bash
# Submit a raysel sweep to a running Ray cluster as a Ray job: the current directory (the project,
# with its tune_configs/) is uploaded as the job's working directory and the sweep's driver runs on
# the head node. Arguments after the spec go to `raysel sweep` (e.g. --set tracking.uri=...).
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh tune_configs/quickstart.yaml --set name=qs1
# Token authentication: Ray reads the token from RAY_AUTH_TOKEN or ~/.ray/auth_token (the same one
# the cluster was started with); it is never put into the runtime env or the spec, so it is not logged.
# MLFLOW_TRACKING_URI, when set here, becomes the sweep's tracking.uri (a later --set wins); on several
# nodes use an MLflow server (launch/mlflow-server.sh) and a storage_path every node sees (NFS, S3).
# Results land where `raysel sweep` would put them run here: a relative storage_path (the default
# raysel_results) is taken in this directory, on the head node (which must have it: it does with
# launch/local-cluster.sh; on a real cluster give an absolute path every node sees).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: launch/submit.sh SPEC.yaml [raysel sweep options...]" >&2
  exit 2
fi
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"  # the client sends the token only in token mode
spec="$1"
shift
tracking=()
if [[ -n "${MLFLOW_TRACKING_URI:-}" ]]; then
  tracking=(--set "tracking.uri=$MLFLOW_TRACKING_URI")
fi
# RAYSEL_SUBMIT_DIR: a relative storage_path or SQLite store resolves against this directory (where you
# run this script), not against the job's working directory (Ray's temporary copy of it)
runtime_env="$(python3 -c 'import json, os, sys
print(json.dumps({"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "TOKENIZERS_PARALLELISM": "false",
                               "RAYSEL_SUBMIT_DIR": os.getcwd()},
                  "excludes": [".venv", "raysel_results", "mlflow.db", "mlflow-server", ".git"]}))')"
name="$(basename "$spec" .yaml)"
exec ray job submit --address "$address" --working-dir . --runtime-env-json "$runtime_env" \
  --submission-id "raysel-$name-$(date +%Y%m%d-%H%M%S)" --metadata-json "{\"job_name\": \"raysel $name\", \"raysel.spec\": \"$name\"}" \
  -- raysel sweep --no-progress "$spec" "${tracking[@]}" "$@"
