# syntax=docker/dockerfile:1
# The order-saga image: one static-ish binary on a distroless base, run as a numeric
# non-root user, with no shell. Build: scripts/image (buildah, or any OCI builder:
# `docker build -t order-saga:$(version) .`).
#
# Both stages are Debian 12 (bookworm), so the binary's glibc matches the run stage's.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# rdkafka-sys compiles librdkafka from source: the image's gcc, make and perl suffice.
WORKDIR /src
# Every member's manifest and sources: cargo loads the whole workspace even to build one
# package. Only the service, -p order-saga, is built and shipped.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY core ./core
COPY tools ./tools
COPY migrations ./migrations
COPY schemas ./schemas
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-saga --bin order-saga \
 && install -D -m 0755 target/release/order-saga /out/order-saga \
 && strip --strip-debug /out/order-saga

# distroless/cc: glibc, libgcc, libssl, CA certificates, tzdata, /etc/passwd with the
# user nonroot (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="order-saga" \
      org.opencontainers.image.description="Exactly-once order saga processor for Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/order-saga /usr/local/bin/order-saga
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/order-saga"]
CMD ["run"]
