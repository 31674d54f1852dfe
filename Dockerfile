# A minimal image of the static `agent` binary, for the Helm chart
# (charts/cluster-relay runs /agent). Not built or tested on the project's
# machines, which have no container engine.
#   docker build -t REGISTRY/cluster-relay/agent:0.1.0 .
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && \
    apt-get update && apt-get install -y --no-install-recommends musl-tools && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --locked --release --target x86_64-unknown-linux-musl --bin agent && \
    cp target/x86_64-unknown-linux-musl/release/agent /agent

FROM scratch
COPY --from=build /agent /agent
# The chart's restricted securityContext runs it as 65532 anyway.
USER 65532:65532
ENTRYPOINT ["/agent"]
