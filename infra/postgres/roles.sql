-- Roles, databases and grants of the container stack (infra/services.py DB_ROLES). The postgres-roles job
-- runs this on every `up`, as the superuser, through libpq's environment (PGHOST, PGUSER, PGPASSWORD):
-- idempotent, and a password changed in .env is applied here (rotation). Passwords are read from the
-- environment with \getenv (psql 15), never written here or on a command line.
\set ON_ERROR_STOP on
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
\getenv optuna_password OPTUNA_DB_PASSWORD
\getenv predictions_password PREDICTIONS_DB_PASSWORD
\getenv worker_password WORKER_DB_PASSWORD
\getenv api_password API_DB_PASSWORD

-- One login role per service, nothing more (no superuser, no database or role creation).
SELECT format('CREATE ROLE %I LOGIN', role)
FROM (VALUES ('mlflow'), ('prefect'), ('optuna'), ('predictions'), ('worker'), ('api')) AS wanted (role)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted.role) \gexec
ALTER ROLE mlflow WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'mlflow_password';
ALTER ROLE prefect WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'prefect_password';
ALTER ROLE optuna WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'optuna_password';
ALTER ROLE predictions WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'predictions_password';
ALTER ROLE worker WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'worker_password';
ALTER ROLE api WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'api_password';

-- Each database owned by the role of its service (ALTER: a stack from before roles had them all owned
-- by the superuser).
SELECT format('CREATE DATABASE %I OWNER %I', name, owner)
FROM (VALUES ('mlflow', 'mlflow'), ('mlflow_auth', 'mlflow'), ('prefect', 'prefect'), ('optuna', 'optuna'),
             ('predictions', 'predictions'), ('monitoring', 'worker')) AS wanted (name, owner)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = wanted.name) \gexec
ALTER DATABASE mlflow OWNER TO mlflow;
ALTER DATABASE mlflow_auth OWNER TO mlflow;
ALTER DATABASE prefect OWNER TO prefect;
ALTER DATABASE optuna OWNER TO optuna;
ALTER DATABASE predictions OWNER TO predictions;
ALTER DATABASE monitoring OWNER TO worker;

-- Who connects where: owners to their own databases; the API and the worker to the prediction log.
REVOKE CONNECT, TEMPORARY ON DATABASE mlflow, mlflow_auth, prefect, optuna, predictions, monitoring FROM PUBLIC;
GRANT CONNECT ON DATABASE predictions TO api, worker;

-- In each database, what the superuser created before roles existed goes to the database's owner
-- (tables with their indexes and owned sequences, free-standing sequences, views, enum types,
-- functions): a migration run by the owner can alter it. Nothing to do on a fresh stack.
\set to_owner 'SELECT format(''ALTER %s %s OWNER TO %I'', o.kind, o.ident, pg_get_userbyid(d.datdba)) FROM pg_database d, (SELECT ''TABLE'' AS kind, format(''public.%I'', tablename) AS ident, tableowner AS owner FROM pg_tables WHERE schemaname = ''public'' UNION ALL SELECT ''VIEW'', format(''public.%I'', viewname), viewowner FROM pg_views WHERE schemaname = ''public'' UNION ALL SELECT ''SEQUENCE'', format(''public.%I'', sequencename), sequenceowner FROM pg_sequences s WHERE schemaname = ''public'' AND NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.objid = format(''public.%I'', s.sequencename)::regclass AND dep.deptype IN (''a'', ''i'')) UNION ALL SELECT ''TYPE'', format(''public.%I'', t.typname), pg_get_userbyid(t.typowner) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = ''public'' AND t.typtype = ''e'' UNION ALL SELECT ''FUNCTION'', p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ''public'') AS o WHERE d.datname = current_database() AND o.owner <> pg_get_userbyid(d.datdba)'
\connect mlflow
:to_owner \gexec
\connect mlflow_auth
:to_owner \gexec
\connect prefect
:to_owner \gexec
\connect optuna
:to_owner \gexec
\connect monitoring
:to_owner \gexec
\connect predictions
:to_owner \gexec

-- The prediction log: the API inserts rows and reads them back (a label's prediction, a repeated label),
-- nothing else (no update, delete or DDL); the worker reads (monitoring, training) and runs retention,
-- which moves old rows to the archive: it deletes them, records the archive's files (log_archive_parts)
-- and, for a restore, inserts them back; no DDL. Tables the owner creates later (its migrations) get the
-- same grants.
GRANT USAGE ON SCHEMA public TO api, worker;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO api;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO worker;
ALTER DEFAULT PRIVILEGES FOR ROLE predictions IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO api;
ALTER DEFAULT PRIVILEGES FOR ROLE predictions IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO worker;
