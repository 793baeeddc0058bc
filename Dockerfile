# syntax=docker/dockerfile:1
# Build: docker build -t keyward .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependency layer: cached until Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches config && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/decision.rs && echo 'fn main() {}' > benches/bare_proxy.rs \
    && touch config/keyward.toml \
    && cargo build --release --locked && rm -rf src benches config
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /nonexistent keyward \
    && mkdir -p /etc/keyward /var/lib/keyward && chown keyward /var/lib/keyward
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
COPY config/docker.toml /etc/keyward/keyward.toml
USER keyward
VOLUME ["/etc/keyward", "/var/lib/keyward"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["keyward", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["keyward"]
CMD ["run", "--config", "/etc/keyward/keyward.toml", "--log-format", "json"]
