#!/usr/bin/env bash
# Start a Docker engine and build local stand-ins for the public base images when no container
# registry is reachable (CI machines behind an apt mirror and a package-registry proxy).
# On a machine that can pull images you do not need this: `docker-compose build` pulls them.
#
#   docker-offline.sh engine                 install docker.io + docker-compose, start dockerd
#   docker-offline.sh python [TAG]           stand-in for python:3.11-slim   (default TAG python:3.11-slim)
#   docker-offline.sh postgres [TAG]         stand-in for the official postgres image (default TAG postgres:15)
#   docker-offline.sh images                 both stand-ins (the engine already started)
#   docker-offline.sh all                    all three
#
# The stand-ins are Debian bookworm root filesystems made with debootstrap from the machine's own
# apt mirror. The python one has python3.11, venv and pip, `python`/`pip` on PATH, and the host's CA
# bundle, so `pip install` inside `docker build` reaches the package registry through this
# machine's proxy. The postgres one honours POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB and
# keeps its data in /var/lib/postgresql/data and runs /docker-entrypoint-initdb.d/*.sql|*.sh on
# first start, like the official image. Images already present are kept: a pulled one always, a
# stand-in while it was built by this script's current recipe (a label records it), so a changed
# recipe rebuilds it. Logs go to $DOCKER_OFFLINE_LOGS (default /tmp).
set -euo pipefail

LOGS=${DOCKER_OFFLINE_LOGS:-/tmp}

log() { printf '[docker-offline] %s\n' "$*" >&2; }

mirror() {
  # The first Debian URI of the machine's apt sources (deb822 or one-line format).
  local uri
  uri=$(grep -hoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hoE '^deb\s+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
  [ -n "$uri" ] || { log "no apt mirror found in /etc/apt"; exit 1; }
  echo "$uri"
}

engine() {
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io docker-compose debootstrap"
    apt-get update -qq >$LOGS/docker-offline.apt.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >>$LOGS/docker-offline.apt.log 2>&1
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    nohup dockerd >$LOGS/docker-offline.dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see $LOGS/docker-offline.dockerd.log"; exit 1; }
  fi
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

RECIPE_LABEL=org.reggaeton.standin-recipe
# The recipe of a stand-in: the text of the functions that build it.
recipe() { declare -f "$@" | sha256sum | cut -c1-16; }

current() {  # current TAG RECIPE: present, and either pulled or a stand-in of this recipe
  have_image "$1" || return 1
  [ "$(docker image inspect -f '{{.Comment}}' "$1")" = "Imported from -" ] || return 0
  [ "$(docker image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$1")" = "$2" ] && return 0
  log "$1 is a stand-in of an older recipe: rebuilding it"
  return 1
}

# The real image when a registry answers; the stand-in is only for machines that cannot pull.
pulled() { [ -z "${DOCKER_OFFLINE_NO_PULL:-}" ] && timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

rootfs() {  # rootfs DIR PACKAGES
  local dir=$1 pkgs=$2
  rm -rf "$dir"
  log "debootstrap bookworm ($pkgs) into $dir"
  debootstrap --variant=minbase --include="$pkgs" bookworm "$dir" "$(mirror)" >"$LOGS/docker-offline.$(basename "$dir").log" 2>&1
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
}

slim() {  # slim DIR: what Debian's -slim images leave out (docs, man pages, locales), now and on later installs
  local dir=$1
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOS'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOS
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$dir"/usr/share/groff/* "$dir"/usr/share/info/* "$dir"/usr/share/linda/* \
    "$dir"/usr/share/lintian/overrides/* "$dir"/usr/share/locale/* "$dir"/usr/share/man/*
}

python_image() {
  local tag=${1:-python:3.11-slim} dir=/tmp/docker-offline.python-rootfs made
  made=$(recipe rootfs slim python_image)
  engine
  if current "$tag" "$made"; then log "$tag present"; return; fi
  if pulled "$tag"; then log "pulled $tag"; return; fi
  # What python:3.11-slim has: the interpreter, venv and pip on a slim Debian (no compiler, no headers:
  # every locked dependency installs from a wheel).
  rootfs "$dir" python3,python3-venv,python3-pip,ca-certificates
  slim "$dir"
  ln -sf /usr/bin/python3 "$dir/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$dir/usr/local/bin/pip"
  tar -C "$dir" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' -c "LABEL $RECIPE_LABEL=$made" - "$tag" >/dev/null
  rm -rf "$dir"
  log "built $tag"
}

postgres_image() {
  local tag=${1:-postgres:15} dir=/tmp/docker-offline.postgres-rootfs made
  made=$(recipe rootfs postgres_image)
  engine
  if current "$tag" "$made"; then log "$tag present"; return; fi
  if pulled "$tag"; then log "pulled $tag"; return; fi
  rootfs "$dir" postgresql-15,ca-certificates
  cat >"$dir/usr/local/bin/docker-entrypoint.sh" <<'EOS'
#!/bin/sh
# Minimal stand-in for the official image's entrypoint.
set -e
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
: "${POSTGRES_USER:=postgres}"; : "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA" /var/run/postgresql && chown -R postgres:postgres "$PGDATA" /var/run/postgresql && chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "$POSTGRES_PASSWORD" ] || { echo "POSTGRES_PASSWORD is required" >&2; exit 1; }
  printf '%s' "$POSTGRES_PASSWORD" > /tmp/pwfile && chown postgres /tmp/pwfile
  # UTF8 like the official image (a SQL_ASCII database hands psycopg 3 bytes instead of text).
  su postgres -s /bin/sh -c "$PGBIN/initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile=/tmp/pwfile --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8" >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != "postgres" ]; then
    su postgres -s /bin/sh -c "$PGBIN/postgres --single -D '$PGDATA' -c listen_addresses='' postgres" <<EOF >/dev/null
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
EOF
  fi
  # Like the official image: run /docker-entrypoint-initdb.d/*.sql and *.sh once, on a fresh data folder.
  if ls /docker-entrypoint-initdb.d/* >/dev/null 2>&1; then
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D '$PGDATA' -w -o \"-c listen_addresses=''\" start" >/dev/null
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sql) echo "running $f"; su postgres -s /bin/sh -c "$PGBIN/psql -v ON_ERROR_STOP=1 -U '$POSTGRES_USER' -d '$POSTGRES_DB' -f '$f'" ;;
        *.sh) echo "running $f"; . "$f" ;;
      esac
    done
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
  fi
fi
# The official image stops with SIGINT (its STOPSIGNAL): Postgres's fast shutdown, which ends every session
# cleanly. `docker import` cannot set STOPSIGNAL, so the SIGTERM of `docker stop` is passed on as SIGINT.
# (Under `su`, Postgres was killed 2 s after a stop, and a client could be left with a connection that
# was never reset.)
setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$PGDATA" -c listen_addresses='*' &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null' TERM INT
set +e
while :; do wait "$pid"; status=$?; kill -0 "$pid" 2>/dev/null || break; done  # a trap ends a wait early
exit "$status"
EOS
  chmod +x "$dir/usr/local/bin/docker-entrypoint.sh"
  tar -C "$dir" -c . | docker import \
    -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
    -c 'ENV PGDATA=/var/lib/postgresql/data' -c 'ENV LANG=C.UTF-8' -c 'EXPOSE 5432' \
    -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' -c "LABEL $RECIPE_LABEL=$made" \
    - "$tag" >/dev/null
  rm -rf "$dir"
  log "built $tag"
}

case "${1:-all}" in
  engine) engine ;;
  python) python_image "${2:-}" ;;
  postgres) postgres_image "${2:-}" ;;
  images) python_image; postgres_image ;;
  all) engine; python_image; postgres_image ;;
  *) echo "usage: $0 engine|python [TAG]|postgres [TAG]|images|all" >&2; exit 2 ;;
esac
