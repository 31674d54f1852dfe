# The agent's image: the static (musl) `agent` binary at /agent, the path the
# Helm chart runs, FROM scratch, non-root. This file is the one recipe:
# `make image` (hack/build-image.sh) builds the binary and then this file with
# buildah, without a daemon; with a container engine the same two steps are
#   cargo build --locked --release --target x86_64-unknown-linux-musl --bin agent
#   docker build -f Dockerfile target/x86_64-unknown-linux-musl/release
# (the build context is the directory that holds the binary, nothing else).
# make image also links the binary's functions in the order of
# hack/agent.order, which only keeps each pod's memory smaller (README,
# "Footprint").
FROM scratch
COPY agent /agent
# The chart's restricted securityContext runs it as 65532 too.
USER 65532:65532
ENTRYPOINT ["/agent"]
