#!/bin/sh
# Entrypoint of the Postgres container (infra/services.py): refuse a superuser password that is unset or
# an example value (.env.example's, reggaeton/settings.py EXAMPLE_SECRETS), then run the image's own
# entrypoint. No application container holds this password, so infra/check_secrets.py cannot check it:
# the database does, before it initialises a data folder with it.
case "${POSTGRES_PASSWORD:-}" in
  "" | change-me | local-dev-only)
    echo "refusing to start: POSTGRES_PASSWORD is not set or is still an example value: set a secret of your own in .env" >&2
    exit 1
    ;;
esac
exec docker-entrypoint.sh "$@"
