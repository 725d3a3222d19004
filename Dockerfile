# syntax=docker/dockerfile:1
#
# regpoll container image: a build stage that compiles the binary (the
# `dist` profile: release, optimised as one program), and a small Debian
# runtime that only holds the binary, curl for the healthcheck and an example
# devices.yaml.
#
#   docker build -t regpoll .
#   docker run --rm -p 127.0.0.1:8080:8080 -v regpoll:/var/lib/regpoll regpoll
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# docker-compose.yml next to this file runs it with TimescaleDB, Redis and the
# Modbus simulator.

# ---------------------------------------------------------------------------
# Build stage. Same Debian release (bookworm, glibc 2.36) as the runtime stage,
# so the dynamically linked binary runs there unchanged. The image already has
# gcc, which the bundled SQLite (libsqlite3-sys, compiled with cc) needs.
FROM rust:1.95-bookworm AS build
WORKDIR /work

# Only what the compiler reads: the manifests, the sources, the migrations
# (embedded by sqlx::migrate!) and devices.yaml (embedded by include_str! in
# src/commands/mod.rs). Tests, scripts and docs stay out, so editing them does not
# invalidate this stage. If the package ever gains a build.rs or explicit
# [[bench]]/[[test]]/[[example]] targets in Cargo.toml, copy those paths too.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY devices.yaml ./

# Cache mounts keep the crates.io downloads and the compiled dependencies
# between builds, so a source change recompiles regpoll only, not the
# ~240 crates it depends on. They are not part of any layer, so:
#  - the binary is copied out of target/ within this same RUN;
#  - `touch` makes the regpoll crate itself always rebuild: cargo decides by
#    modification times, and a cached target/ from a newer checkout could
#    otherwise look up to date for older sources; it also re-expands
#    sqlx::migrate!, so an edited migration is always picked up.
#  - sharing=locked serialises concurrent builds using the same caches
#    (docker compose builds this file for two services); cargo's own lock
#    lives in CARGO_HOME outside the mount and would not protect it.
# --locked: build exactly Cargo.lock; fail rather than resolve new versions.
# --bin regpoll: the image ships the service, not the benchmark driver
# (regpoll-bench), whose link would only add to the build.
# objcopy: the dist profile keeps release's line tables (debug = 1) for
# backtraces; compressing them shrinks the binary ~2.5x (87 MB to 34 MB) and backtraces
# still show file:line.
RUN --mount=type=cache,id=regpoll-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=regpoll-target,target=/work/target,sharing=locked \
    touch src/lib.rs src/main.rs \
 && cargo build --profile dist --locked --bin regpoll \
 && install -D -m 0755 target/dist/regpoll /out/regpoll \
 && objcopy --compress-debug-sections=zlib /out/regpoll

# ---------------------------------------------------------------------------
# Runtime stage.
FROM debian:bookworm-slim AS runtime

# ca-certificates: for TLS connections should a database or Redis URL ever
# need them (the image's own build uses none). curl: the HEALTHCHECK below
# and the compose healthcheck on /ready. --no-install-recommends keeps it small.
# Versions are not pinned: Debian drops superseded versions from the archive
# at each point release, so a pin would break rebuilds; the base tag pins the
# release (bookworm) and updates bring security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid (10001), so files on volumes and bind mounts have
# a predictable owner across rebuilds and hosts (chown -R 10001:10001 to
# prepare a host directory). /var/lib/regpoll is created and owned by the
# user *before* VOLUME below: a new named volume is initialised from the
# image's directory, ownership included, so regpoll can write to it.
RUN groupadd --system --gid 10001 regpoll \
 && useradd --system --uid 10001 --gid regpoll --home-dir /var/lib/regpoll \
        --no-create-home --shell /usr/sbin/nologin regpoll \
 && install -d -o regpoll -g regpoll -m 0750 /var/lib/regpoll /var/lib/regpoll/data \
 && install -d -m 0755 /etc/regpoll

COPY --from=build /out/regpoll /usr/local/bin/regpoll

# An example only: its devices point at 127.0.0.1:5020-5022 (a simulator in
# the same container or network namespace). Mount your own file over it and
# set REGPOLL_DEVICES (or pass --devices); nothing reads it by default.
COPY devices.yaml /etc/regpoll/devices.yaml

# Everything regpoll writes goes under the volume: the SQLite file (used only
# when no database URL is set) and the data dir, whose spool/ subdirectory
# holds readings while the database is unreachable and must survive restarts.
# The HTTP API must listen on all interfaces to be reachable through a
# published port; the default 127.0.0.1 would only be reachable from inside.
# On 0.0.0.0 regpoll asks for tokens: give REGPOLL_HTTP_TOKENS or
# REGPOLL_HTTP_TOKEN_FILE, or REGPOLL_HTTP_INSECURE=true to serve it open on
# purpose (docker-compose.yml does, publishing the port on 127.0.0.1 only);
# without either `run` refuses to start. /health needs no token.
ENV REGPOLL_DATA_DIR=/var/lib/regpoll/data \
    REGPOLL_SQLITE_PATH=/var/lib/regpoll/regpoll.db \
    REGPOLL_HTTP=0.0.0.0:8080

WORKDIR /var/lib/regpoll
VOLUME ["/var/lib/regpoll"]

# Numeric, so runtimes that enforce "run as non-root" can check it.
USER 10001:10001

EXPOSE 8080

# Liveness only (/health answers 200 while the process runs): an outage of the
# database or Redis is not a reason to call the container broken, regpoll
# spools and reconnects by itself. Use /ready to see whether the dependencies
# are reachable (docker-compose.yml does). Assumes the HTTP API on port 8080:
# with REGPOLL_HTTP=off or another port, override or disable the healthcheck
# (`regpoll simulate` has no HTTP at all).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]

# regpoll handles SIGTERM (and SIGINT) itself: it stops polling and flushes
# its queues within REGPOLL_SHUTDOWN_TIMEOUT (10s). As PID 1 it gets no default
# signal actions, which is fine since it installs handlers. Give `docker stop`
# more than that timeout (docker stop -t 30; stop_grace_period in compose).
STOPSIGNAL SIGTERM

ENTRYPOINT ["regpoll"]
CMD ["run"]
