#!/bin/sh
# Creates the login roles the Compose services connect as. The postgres
# image runs this once, when it initialises an empty data directory; roles
# belong to the cluster, so migrations create none. What each role may do
# is granted afterwards by `outbox-relay grant` (the setup service).
#
#   APP_DB_USER / APP_DB_PASSWORD          the application: inserts intents
#   RELAY_DB_USER / RELAY_DB_PASSWORD      the relays
#   AUDITOR_DB_USER / AUDITOR_DB_PASSWORD  read-only auditing
#
# Idempotent: an existing role gets the password given here.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
	-v app_user="${APP_DB_USER:-app}" -v app_password="${APP_DB_PASSWORD:?APP_DB_PASSWORD is required}" \
	-v relay_user="${RELAY_DB_USER:-relay}" -v relay_password="${RELAY_DB_PASSWORD:?RELAY_DB_PASSWORD is required}" \
	-v auditor_user="${AUDITOR_DB_USER:-auditor}" -v auditor_password="${AUDITOR_DB_PASSWORD:?AUDITOR_DB_PASSWORD is required}" \
	<<'SQL'
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY[:'app_user', :'relay_user', :'auditor_user']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'relay_user', :'relay_password') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'auditor_user', :'auditor_password') \gexec
SQL
