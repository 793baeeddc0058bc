# syntax=docker/dockerfile:1
# Build: docker build -t keyward .
# The build steps are scripts/image-build.sh's, which CI also runs without
# Docker (scripts/image-check.sh). Expected size and how it was checked:
# docs/operations.md "Docker".

# --- chef: the toolchain, cmake (pingora's zlib-ng), cargo-chef
FROM rust:1-bookworm AS chef
RUN apt-get update && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/image-build.sh scripts/image-build.sh
RUN scripts/image-build.sh chef

# --- planner: recipe.json, the manifests' skeleton (every [[bin]], [[bench]],
# [[example]] and [lib] Cargo.toml declares, so none can break the layer below)
FROM chef AS planner
COPY . .
RUN scripts/image-build.sh prepare

# --- build: dependencies (cached until Cargo.toml/Cargo.lock change), then keyward
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN scripts/image-build.sh deps
COPY . .
# debug info out (line tables: 117 -> 26 MB), symbols kept for backtraces
RUN scripts/image-build.sh build && strip --strip-debug target/release/keyward

# --- runtime: glibc of the same Debian release, CA certificates for
# https/s3/gs/az snapshot sources, rediss:// and upstream TLS; non-root
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 keyward \
    && useradd --system --uid 10001 --gid 10001 --home /nonexistent --shell /usr/sbin/nologin keyward \
    && mkdir -p /etc/keyward /var/lib/keyward && chown 10001:10001 /var/lib/keyward
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
COPY config/docker.toml /etc/keyward/keyward.toml
USER 10001:10001
VOLUME ["/var/lib/keyward"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["keyward", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["keyward"]
CMD ["run", "--config", "/etc/keyward/keyward.toml", "--log-format", "json"]
