#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first created: one database per service.
set -euo pipefail
for db in mlflow prefect optuna; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE $db"
done
