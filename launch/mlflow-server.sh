#!/usr/bin/env bash
# An MLflow tracking server for raysel sweeps: SQLite backend + a local artifact root, bound to
# 127.0.0.1 unless MLFLOW_HOST says otherwise (reach it from elsewhere through an SSH tunnel, or put
# it behind an authenticating proxy before binding to 0.0.0.0).
#   launch/mlflow-server.sh                    # http://127.0.0.1:5000, files under ./mlflow-server/
#   MLFLOW_DIR=/shared/mlflow MLFLOW_PORT=5001 launch/mlflow-server.sh
# Sweeps then log there with  --set tracking.uri=http://127.0.0.1:5000
set -euo pipefail
dir="${MLFLOW_DIR:-$PWD/mlflow-server}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
mkdir -p "$dir/artifacts"
exec mlflow server \
  --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --artifacts-destination "$dir/artifacts" \
  --serve-artifacts \
  --host "$host" --port "$port" \
  --workers "${MLFLOW_WORKERS:-2}"
