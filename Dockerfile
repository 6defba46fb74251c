# Build stage: the release binary, linked against glibc; aws-lc-rs needs only a C compiler.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lakebase-proxy

# Runtime stage: the binary, CA certificates for verifying upstreams, and a non-root user.
FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates; pinning it would freeze stale roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home lakebase-proxy
COPY --from=build /src/target/release/lakebase-proxy /usr/local/bin/lakebase-proxy
USER 10001
# Containers talk to a sidecar over the pod's shared loopback; logs go to a collector.
ENV LAKEBASE_PROXY_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/lakebase-proxy"]
