# shellcheck shell=bash
# scripts/lib/services.sh — throwaway PostgreSQL and Redis for scripts/test
# and scripts/bench. Source it; it only defines functions and initialises the
# globals below, so sourcing never exits or starts anything. The caller sets
# `set -euo pipefail` and LOG_PREFIX, then typically:
#
#   LOG_PREFIX=scripts/foo
#   . scripts/lib/services.sh
#   require_pg_bin            # sets PG_BIN (installs postgresql as root)
#   require_redis             # installs redis-server as root
#   setup_pg_user             # sets PG_RUNAS ("postgres" as root, else "")
#   make_scratch_dir foo      # sets SCRATCH_DIR, PGDATA_DIR; EXIT/INT/TERM/HUP traps
#   pick_ports                # sets PGPORT, REDISPORT, REDIS_TLS_PORT
#   detect_timescaledb        # sets PG_TIMESCALEDB (1 or "")
#   start_postgres "fsync = off" ...   # extra postgresql.conf lines
#   start_redis [TLS_DIR]     # sets REDIS_PID; with TLS_DIR (made by
#                             # make_test_certs) also TLS on REDIS_TLS_PORT
#
# Call these as plain commands, not inside `if`, `!`, `&&`/`||` or `$(...)`:
# they rely on `set -e` and set globals in the calling shell. The cleanup trap
# stops both servers and removes the scratch dir on any exit, keeping the exit
# status; INT/TERM/HUP become exits 130/143/129.

# Executed instead of sourced: say how it is meant to be used.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    printf '%s: this is a library; source it from a script (see its header)\n' "$0" >&2
    exit 2
fi

# Globals shared with the caller. Initialised here so `set -u` holds and the
# cleanup trap never acts on a value inherited from the environment.
# shellcheck disable=SC2034  # PGDATA_DIR, PGPORT, REDISPORT, REDIS_TLS_PORT, PG_TIMESCALEDB are for the caller
{
    PG_BIN=""
    PG_RUNAS=""
    SCRATCH_DIR=""
    PGDATA_DIR=""
    PGPORT=""
    REDISPORT=""
    REDIS_TLS_PORT=""
    PG_TIMESCALEDB=""
    PG_STARTED=""
    REDIS_PID=""
    PG_HBA_FIRST=""
}

log() { printf '%s: %s\n' "${LOG_PREFIX:-${0##*/}}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Install a Debian package when we are allowed to, otherwise explain what is
# missing. The lock timeout lets us wait for another apt/dpkg run (e.g. one
# started by provisioning) instead of failing on the lock.
install_pkg() {
    local pkg=$1 what=$2
    if ! is_root; then
        log "$what not found. Install it first, e.g.:"
        log "    sudo apt-get install -y $pkg"
        exit 1
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "$what not found and apt-get is unavailable; install $pkg by hand"
    log "$what not found; installing $pkg with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update >&2 ||
        die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$pkg" >&2 ||
        die "apt-get install $pkg failed"
}

# --- PostgreSQL server binaries ------------------------------------------------
# Debian keeps server binaries in /usr/lib/postgresql/<ver>/bin, off PATH, so
# look there first and prefer the newest major version.
find_pg_bin() {
    local d dir
    # (An unmatched glob stays literal and fails the -x test.)
    d=$(for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ]; then printf '%s\n' "$dir"; fi
    done | sort -V | tail -n 1)
    if [ -z "$d" ] && command -v initdb >/dev/null 2>&1; then
        d=$(dirname "$(command -v initdb)")
    fi
    printf '%s' "$d"
}

# Sets PG_BIN to a directory with a complete set of server binaries,
# installing the postgresql package when there is none (as root).
require_pg_bin() {
    local b
    PG_BIN=$(find_pg_bin)
    if [ -z "$PG_BIN" ]; then
        install_pkg postgresql "PostgreSQL server (initdb)"
        PG_BIN=$(find_pg_bin)
        [ -n "$PG_BIN" ] || die "postgresql installed but initdb still not found"
    fi
    for b in initdb pg_ctl pg_isready postgres; do
        [ -x "$PG_BIN/$b" ] || die "$PG_BIN/$b missing; is the PostgreSQL server installed completely?"
    done
}

# --- Redis -----------------------------------------------------------------------
require_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        install_pkg redis-server "redis-server/redis-cli"
        command -v redis-server >/dev/null 2>&1 || die "redis-server still not found after install"
        command -v redis-cli >/dev/null 2>&1 || die "redis-cli still not found after install"
    fi
}

# --- Server user -------------------------------------------------------------------
# initdb and postgres refuse to run as root, so as root the cluster belongs to
# the "postgres" system user and every server command goes through runuser.
setup_pg_user() {
    PG_RUNAS=""
    if is_root; then
        PG_RUNAS=postgres
        if ! id -u "$PG_RUNAS" >/dev/null 2>&1; then
            log "creating system user $PG_RUNAS to own the test cluster"
            useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_RUNAS"
        fi
    fi
}
as_pg() {
    if [ -n "$PG_RUNAS" ]; then
        runuser -u "$PG_RUNAS" -- "$@"
    else
        "$@"
    fi
}

# --- Scratch directory and cleanup ---------------------------------------------------
# Always tear down what we started — also when the caller fails or we are
# interrupted — and keep the exit status of whatever made us exit.
# shellcheck disable=SC2317  # only ever invoked through the trap
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    if [ -n "$PG_STARTED" ]; then
        # "immediate" because the data is thrown away anyway.
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1; then
            # pg_ctl could not do it (e.g. a test broke the data dir): kill the
            # postmaster directly so no server outlives us.
            local pid
            pid=$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null)
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
        fi
    fi
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    fi
    [ -n "$SCRATCH_DIR" ] && rm -rf "$SCRATCH_DIR"
    exit "$rc"
}

# make_scratch_dir NAME: installs the cleanup traps, then creates
# $TMPDIR/NAME.XXXXXX as SCRATCH_DIR (server data, sockets, logs) with
# PGDATA_DIR inside it. Call setup_pg_user first: the server user must be
# able to write here.
make_scratch_dir() {
    local name=$1 tmp_base
    trap cleanup EXIT
    # Turn signals into a normal exit so the EXIT trap runs with a telling status.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    # The unix socket lives in here, and socket paths are limited to ~107 bytes,
    # so fall back to /tmp when $TMPDIR is long.
    tmp_base=${TMPDIR:-/tmp}
    [ "${#tmp_base}" -le 60 ] || tmp_base=/tmp
    SCRATCH_DIR=$(mktemp -d "$tmp_base/$name.XXXXXX")
    PGDATA_DIR="$SCRATCH_DIR/pgdata"
    if [ -n "$PG_RUNAS" ]; then
        # The server user needs the scratch dir for its data, socket and log.
        chown "$PG_RUNAS": "$SCRATCH_DIR"
        as_pg test -w "$SCRATCH_DIR" ||
            die "$PG_RUNAS cannot write to $SCRATCH_DIR (is a parent directory private? try TMPDIR=/tmp)"
    fi
}

# --- Free ports ----------------------------------------------------------------------
# Let the kernel pick a free port; without python3, probe random high ports.
# Prints the port, so this one is called as $(free_port).
free_port() {
    local p
    if p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null) &&
        [ -n "$p" ]; then
        echo "$p"
        return
    fi
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        # A refused connection means nobody listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "could not find a free TCP port"
}

# Sets PGPORT, REDISPORT and REDIS_TLS_PORT to three distinct free ports.
pick_ports() {
    PGPORT=$(free_port)
    REDISPORT=$(free_port)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ "$REDISPORT" != "$PGPORT" ] && break
        REDISPORT=$(free_port)
    done
    [ "$REDISPORT" != "$PGPORT" ] || die "could not find two distinct free TCP ports"
    REDIS_TLS_PORT=$(free_port)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ "$REDIS_TLS_PORT" != "$PGPORT" ] && [ "$REDIS_TLS_PORT" != "$REDISPORT" ] && break
        REDIS_TLS_PORT=$(free_port)
    done
    [ "$REDIS_TLS_PORT" != "$PGPORT" ] && [ "$REDIS_TLS_PORT" != "$REDISPORT" ] ||
        die "could not find three distinct free TCP ports"
}

# --- PostgreSQL ------------------------------------------------------------------------
# TimescaleDB is optional: sets PG_TIMESCALEDB=1 when the extension is
# installed for this server version (start_postgres then preloads it).
detect_timescaledb() {
    local sharedir
    PG_TIMESCALEDB=""
    if [ -x "$PG_BIN/pg_config" ]; then
        sharedir=$("$PG_BIN/pg_config" --sharedir 2>/dev/null) || sharedir=""
        if [ -n "$sharedir" ] && [ -f "$sharedir/extension/timescaledb.control" ]; then
            PG_TIMESCALEDB=1
        fi
    fi
}

# start_postgres [CONF_LINE...]: initdb's a cluster in PGDATA_DIR, appends
# the connection settings, the TimescaleDB preload (when detect_timescaledb
# found it) and the caller's CONF_LINEs to postgresql.conf, starts it on
# 127.0.0.1:PGPORT and waits until it accepts connections. The superuser is
# "postgres" with trust authentication.
# PG_HBA_FIRST, when the caller sets it, holds pg_hba.conf lines put before
# initdb's trust lines (the first matching line decides).
start_postgres() {
    local line pg_up started_at pg_status
    log "initialising PostgreSQL cluster with $PG_BIN/initdb"
    # --no-sync only skips flushing initdb's own files; the server's fsync
    # setting is the caller's choice.
    if ! as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres --no-sync -E UTF8 \
        >"$SCRATCH_DIR/initdb.log" 2>&1; then
        cat "$SCRATCH_DIR/initdb.log" >&2
        die "initdb failed"
    fi

    if [ -n "$PG_HBA_FIRST" ]; then
        {
            echo "# added by $LOG_PREFIX"
            printf '%s\n' "$PG_HBA_FIRST"
            cat "$PGDATA_DIR/pg_hba.conf"
        } >"$SCRATCH_DIR/pg_hba.conf"
        as_pg cp "$SCRATCH_DIR/pg_hba.conf" "$PGDATA_DIR/pg_hba.conf"
    fi

    {
        echo "# added by $LOG_PREFIX"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PGPORT"
        echo "unix_socket_directories = '$SCRATCH_DIR'"
        for line in "$@"; do
            echo "$line"
        done
        if [ -n "$PG_TIMESCALEDB" ]; then
            echo "shared_preload_libraries = 'timescaledb'"
            echo "timescaledb.telemetry_level = off"
        fi
    } >>"$PGDATA_DIR/postgresql.conf"

    log "starting PostgreSQL on 127.0.0.1:$PGPORT"
    PG_STARTED=1
    # -W: don't let pg_ctl wait; we poll pg_isready below with our own bound.
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$SCRATCH_DIR/postgres.log" -W start >/dev/null; then
        cat "$SCRATCH_DIR/postgres.log" >&2 2>/dev/null || true
        die "pg_ctl start failed"
    fi
    # Bounded by wall-clock time (a connect attempt can itself take a while), and
    # cut short when the postmaster has already died, e.g. because the port was
    # taken between choosing it and binding it.
    pg_up=""
    started_at=$SECONDS
    while [ $((SECONDS - started_at)) -lt 30 ]; do
        if "$PG_BIN/pg_isready" -q -t 2 -h 127.0.0.1 -p "$PGPORT" -U postgres; then
            pg_up=1
            break
        fi
        # pg_ctl status: 3 = no server running. Give the postmaster a moment to
        # write its pid file before trusting that.
        if [ $((SECONDS - started_at)) -ge 2 ]; then
            pg_status=0
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1 || pg_status=$?
            if [ "$pg_status" -eq 3 ]; then
                log "PostgreSQL exited during startup"
                break
            fi
        fi
        sleep 0.5
    done
    if [ -z "$pg_up" ]; then
        log "PostgreSQL server log ($SCRATCH_DIR/postgres.log):"
        cat "$SCRATCH_DIR/postgres.log" >&2 2>/dev/null || true
        die "PostgreSQL did not become ready on 127.0.0.1:$PGPORT (waited up to 30 s)"
    fi
}

# --- TLS certificates for the tests ----------------------------------------------------
# make_test_certs DIR: a certificate authority of the test run and what it
# signs, made fresh with openssl (nothing secret is kept in the repository):
#   ca.crt                      the test run's CA
#   server.crt, server.key      for the servers; valid for the host name
#                               `localhost` only, so 127.0.0.1 is a wrong name
#   client.crt, client.key      a client certificate, CN=regpoll_cert
#   other-ca.crt                a CA nobody's certificate is signed by (the
#                               "unknown CA" of the tests)
# The keys are readable by PG_RUNAS, which the PostgreSQL server runs as
# (it refuses a key others can read).
make_test_certs() {
    local dir=$1 days=2
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=regpoll test CA" \
            -keyout ca.key -out ca.crt
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=some other CA" \
            -keyout other-ca.key -out other-ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf 'subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
            -extfile server.ext -out server.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=regpoll_cert" -keyout client.key -out client.csr
        printf 'basicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
            -extfile client.ext -out client.crt
        rm -f ./*.csr ./*.ext ./*.srl
        chmod 600 ./*.key
    ) >"$SCRATCH_DIR/certs.log" 2>&1 || { cat "$SCRATCH_DIR/certs.log" >&2; die "openssl could not make the test certificates"; }
    if [ -n "${PG_RUNAS:-}" ]; then
        chown -R "$PG_RUNAS" "$dir"
    fi
}

# --- Redis -------------------------------------------------------------------------------
# start_redis [TLS_DIR]: starts redis-server on 127.0.0.1:REDISPORT (its log
# and working dir in SCRATCH_DIR), sets REDIS_PID and waits for PONG. With
# TLS_DIR (certificates as make_test_certs makes them) it also listens with
# TLS only on REDIS_TLS_PORT, a client certificate optional.
# No persistence: the data is throwaway and we don't want dump files around.
start_redis() {
    local redis_up started_at tls_dir=${1:-}
    local tls_args=()
    if [ -n "$tls_dir" ]; then
        tls_args=(--tls-port "$REDIS_TLS_PORT" --tls-cert-file "$tls_dir/server.crt"
            --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.crt"
            --tls-auth-clients optional)
        log "starting Redis on 127.0.0.1:$REDISPORT, TLS on 127.0.0.1:$REDIS_TLS_PORT"
    else
        log "starting Redis on 127.0.0.1:$REDISPORT"
    fi
    redis-server --port "$REDISPORT" --bind 127.0.0.1 --save '' --appendonly no \
        "${tls_args[@]}" \
        --daemonize no --dir "$SCRATCH_DIR" >"$SCRATCH_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    redis_up=""
    started_at=$SECONDS
    while [ $((SECONDS - started_at)) -lt 30 ]; do
        # timeout: redis-cli has no connect timeout of its own.
        if [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$REDISPORT" ping 2>/dev/null)" = "PONG" ]; then
            redis_up=1
            break
        fi
        # Stop waiting early if the server already died (e.g. port taken).
        if ! kill -0 "$REDIS_PID" 2>/dev/null; then
            log "Redis exited during startup"
            break
        fi
        sleep 0.5
    done
    if [ -z "$redis_up" ]; then
        log "Redis log ($SCRATCH_DIR/redis.log):"
        cat "$SCRATCH_DIR/redis.log" >&2 2>/dev/null || true
        die "Redis did not answer PING on 127.0.0.1:$REDISPORT (waited up to 30 s)"
    fi
}
