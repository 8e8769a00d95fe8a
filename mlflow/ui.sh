#!/usr/bin/env bash
# Start the MLflow UI / tracking server against the project's local store (SQLite + artifacts
# beside it). Usage: bash mlflow/ui.sh [PORT [DB]]   then open http://127.0.0.1:PORT/#/experiments
# (DB defaults to mlflow/mlflow.db, the store `vce run` writes; its artifacts are in DB's folder/artifacts)
# The runs table of the study is at #/experiments/<id>/runs (parent "study-<profile>" run,
# one child per ablation: expand it to compare).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:-5000}"
db="$(realpath -m "${2:-$here/mlflow.db}")"
store="$(dirname "$db")"
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
bin="$here/../.venv/bin"
[ -x "$bin/mlflow" ] || bin="$(dirname "$(command -v mlflow)")"
exec "$bin/mlflow" server \
  --backend-store-uri "sqlite:///$db" \
  --default-artifact-root "file://$store/artifacts" \
  --serve-artifacts \
  --host 127.0.0.1 --port "$port" --workers 1
