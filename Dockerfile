# syntax=docker/dockerfile:1
#
# weiling-relay container image.
#
#   docker build -t weiling-relay:0.1.0 .
#   docker run --rm -p 8080:8080 -e WEILING_RELAY_APP_ID=… -e WEILING_RELAY_APP_SECRET=… \
#     -e WEILING_RELAY_TOKEN=… -e WEILING_RELAY_ENCODING_AES_KEY=… \
#     -e WEILING_RELAY__AMQP__URL=amqp://user:pass@rabbitmq:5672/%2f weiling-relay:0.1.0
#
# Needs BuildKit (the default builder of current Docker): the cargo registry and target directory live in
# cache mounts, so a source change rebuilds only this crate, not its ~130 dependencies.
# The runtime image has no shell and no package manager; it runs as UID/GID 10001 (the Helm chart's
# runAsUser) and carries the CA certificates (/etc/ssl/certs) that reqwest's rustls platform verifier
# needs for Weiling's HTTPS API.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the build reads is in the context (see .dockerignore). aws-lc-sys and ring compile C with the
# image's gcc; no cmake or OpenSSL is needed.
COPY . .
# Cargo.lock is honoured (--locked). The release profile keeps line tables (debug = 1) for backtraces; the
# debuginfo sections are stripped from the copy that goes into the image, the symbol table is kept.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin weiling-relay \
    && mkdir -p /out \
    && strip --strip-debug -o /out/weiling-relay target/release/weiling-relay \
    && /out/weiling-relay --help >/dev/null

# glibc 2.36 (Debian 12), like the builder, plus ca-certificates and tzdata; no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="weiling-relay" \
      org.opencontainers.image.description="Weiling (卫瓴) callback relay: verified events into RabbitMQ, enriched customer records out" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=builder --chmod=0755 /out/weiling-relay /usr/local/bin/weiling-relay
# For reference only: the same defaults are compiled into the binary. Mount your own file and pass
# `serve --config FILE` (the Helm chart mounts /etc/weiling-relay/relay.toml).
COPY --chmod=0444 config/default.toml /etc/weiling-relay/default.toml
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weiling-relay"]
CMD ["serve"]
