# Portcullis container image: a Rust build stage and a small Debian runtime.
#
#   buildah build --format docker -t portcullis .    (docker format keeps the HEALTHCHECK)
#   docker build -t portcullis .
#
# The cargo registry and target directory are cache mounts, so a rebuild after a
# source change recompiles only this crate. PROFILE=dev builds a faster, unoptimised
# binary (what tests/image.rs uses).

FROM docker.io/library/rust:1.95-slim-bookworm AS build
ARG PROFILE=release
# Debug info would only make the dev binary and its cache larger.
ARG CARGO_PROFILE_DEV_DEBUG=0
# pingora-core builds zlib-ng with cmake (which runs make).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# A [[bin]] of the package: cargo reads its path even when building only portcullis.
COPY loadtest/src loadtest/src
RUN --mount=type=cache,id=portcullis-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=portcullis-target,target=/src/target,sharing=locked \
    cargo build --locked --profile "$PROFILE" --bin portcullis \
    && case "$PROFILE" in dev) out=debug ;; *) out="$PROFILE" ;; esac \
    && cp "target/$out/portcullis" /usr/local/bin/portcullis

FROM docker.io/library/debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Container-registry gateway: TLS edge, OCI Distribution API, content-addressed store, pull-through cache" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# A fixed UID/GID, so volumes can be prepared on the host: chown 10001:10001 DIR.
RUN groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid portcullis --no-create-home \
        --home-dir /data --shell /usr/sbin/nologin portcullis \
    && mkdir -p /data /certs /etc/portcullis \
    && chown portcullis:portcullis /data
# The pull-through cache verifies upstream registries against the system roots
# (rustls reads this bundle; no OpenSSL).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
COPY conf/container.toml /etc/portcullis/portcullis.toml
USER 10001:10001
VOLUME ["/data", "/certs"]
# Plain HTTP, TLS (when [tls] is set), metrics and health.
EXPOSE 5000 5443 5001
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["portcullis", "health"]
ENTRYPOINT ["portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
