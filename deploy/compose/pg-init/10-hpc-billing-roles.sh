#!/bin/sh
# Runs once, when the postgres image initialises an empty data directory: creates the
# collector's role and Grafana's read-only role (deploy/sql/roles.sql) in $POSTGRES_DB.
set -eu
: "${HPC_BILLING_DB_PASSWORD:?set HPC_BILLING_DB_PASSWORD in .env}"
: "${GRAFANA_DB_PASSWORD:?set GRAFANA_DB_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="$HPC_BILLING_DB_PASSWORD" -v grafana_password="$GRAFANA_DB_PASSWORD" \
    -f /opt/hpc-billing/sql/roles.sql
