# Build the binaries once; protox compiles the .proto, so no protoc is needed. cargo-chef builds
# the dependencies in a layer of their own, keyed on the manifests and the lock file only, so an
# edit of the sources or the docs rebuilds the workspace's crates and nothing else.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe: the manifests and Cargo.lock, without the sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p gonest-sessiond -p gonest-sessionctl -p example-app
COPY . .
RUN cargo build --release --locked -p gonest-sessiond -p gonest-sessionctl -p example-app \
    && mkdir /data

# The example app: docker build --target example-app .
FROM gcr.io/distroless/cc-debian12:nonroot AS example-app
COPY --from=build /src/target/release/example-app /usr/local/bin/example-app
ENV EXAMPLE_APP_LISTEN=0.0.0.0:3000
EXPOSE 3000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/example-app"]

# The daemon (the default target): listens on all interfaces; with GONEST_SESSIOND_DATA_DIR=/data
# it keeps its snapshot and append-only log there (mount a volume on /data).
FROM gcr.io/distroless/cc-debian12:nonroot AS sessiond
COPY --from=build /src/target/release/gonest-sessiond /usr/local/bin/gonest-sessiond
# The operator's CLI, /usr/local/bin/gonest-sessionctl. Under compose the daemon's service sets
# GONEST_SESSIONCTL_TOKEN_FILE to its token: docker compose exec sessiond gonest-sessionctl stats
COPY --from=build /src/target/release/gonest-sessionctl /usr/local/bin/gonest-sessionctl
COPY --from=build --chown=65532:65532 /data /data
ENV GONEST_SESSIOND_LISTEN=0.0.0.0:7070
EXPOSE 7070
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/gonest-sessiond", "health"]
ENTRYPOINT ["/usr/local/bin/gonest-sessiond"]
