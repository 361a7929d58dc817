# syntax=docker/dockerfile:1
# The gpufleet operator image: the binary built from this repository with the
# locked dependencies, on a distroless base (glibc and CA certificates, no
# shell, no package manager), run as a non-root user.
#
#   docker build -t gpufleet:dev .
#   docker run --rm gpufleet:dev --help
#
# The chart runs it as `gpufleet run ...` (the entrypoint plus its arguments)
# with a read-only root filesystem; it needs no writable path.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the build between builds; the
# binary is copied out of the cached target folder. --no-default-features
# leaves out the dev tools (`demo`, `bench`, the simulated fleet).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin gpufleet \
    && install -D -m 0755 target/release/gpufleet /out/gpufleet

# Debian 12, like the builder, so the binary finds the glibc it was linked
# against. The :nonroot variant runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gpufleet /usr/local/bin/gpufleet
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gpufleet"]
CMD ["run"]
