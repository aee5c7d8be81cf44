-- hpc-billing's two database roles, and the database's privileges. Idempotent: run it
-- again to rotate a password or to grant the views to a role created after `migrate`.
--
--   hpc_billing          the collector: owns the database, runs the migrations, writes.
--   hpc_billing_grafana  dashboards: reads the views of schema `reporting` and nothing
--                        else (no table of `public`, no writes, no temp tables).
--
-- Run as a superuser (or a role with CREATEROLE that may ALTER DATABASE) IN the
-- collector's database, with the passwords as psql variables (either may be left out to
-- keep the current one):
--
--   sudo -u postgres createdb hpc_billing
--   sudo -u postgres psql -d hpc_billing -v ON_ERROR_STOP=1 \
--       -v app_password="$APP_PW" -v grafana_password="$GRAFANA_PW" -f deploy/sql/roles.sql
--
-- In compose, deploy/compose/pg-init/10-hpc-billing-roles.sh runs it when the pg
-- container initialises its data directory.
\set ON_ERROR_STOP on

SELECT 'CREATE ROLE hpc_billing LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'hpc_billing') \gexec
SELECT 'CREATE ROLE hpc_billing_grafana LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'hpc_billing_grafana') \gexec

\if :{?app_password}
ALTER ROLE hpc_billing PASSWORD :'app_password';
\endif
\if :{?grafana_password}
ALTER ROLE hpc_billing_grafana PASSWORD :'grafana_password';
\endif

-- The reader cannot write even where a grant would let it, and cannot hold a
-- connection or a query for long.
ALTER ROLE hpc_billing_grafana SET default_transaction_read_only = on;
ALTER ROLE hpc_billing_grafana SET statement_timeout = '30s';
ALTER ROLE hpc_billing_grafana CONNECTION LIMIT 20;

-- The collector owns the database (and so, from PostgreSQL 15 on, its public schema):
-- `hpc-billing migrate` creates the tables and the reporting views as that role.
SELECT format('ALTER DATABASE %I OWNER TO hpc_billing', current_database()) \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO hpc_billing_grafana', current_database()) \gexec
-- PostgreSQL 14 and older let every role create objects in public.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- When the schema was migrated before this role existed, grant what migration 0005
-- grants to an existing role: the views, the utilisation function, and the views later
-- revisions add (default privileges of the schema's owner).
DO $grants$
DECLARE
    owner name;
BEGIN
    SELECT n.nspowner::regrole::name INTO owner
      FROM pg_catalog.pg_namespace n WHERE n.nspname = 'reporting';
    IF owner IS NOT NULL THEN
        GRANT USAGE ON SCHEMA reporting TO hpc_billing_grafana;
        GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO hpc_billing_grafana;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA reporting TO hpc_billing_grafana;
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA reporting '
                       'GRANT SELECT ON TABLES TO hpc_billing_grafana', owner);
    END IF;
END
$grants$;

-- The audit trail (migration 0010) is append-only for the collector: it may read and add
-- entries, never change or remove one. The migration revokes UPDATE, DELETE and TRUNCATE
-- from the role that ran it; this repeats it for a schema migrated by another role
-- (and grants what the collector needs there). An owner can grant them back to itself:
-- the hash chain (`hpc-billing audit verify`) is what shows an edit made anyway.
DO $audit$
BEGIN
    IF to_regclass('public.audit_log') IS NOT NULL THEN
        GRANT SELECT, INSERT ON public.audit_log TO hpc_billing;
        REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_log FROM hpc_billing;
    END IF;
END
$audit$;
