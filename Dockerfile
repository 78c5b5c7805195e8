# Image holding every seqmon binary. Build: docker build -t seqmon:0.1.0 .
# Base images are pinned by digest (a moved or poisoned tag cannot change what is built or
# shipped); refresh deliberately: docker buildx imagetools inspect rust:1.89-bookworm (the
# index digest), likewise debian:bookworm-slim. The runtime stage applies Debian's security
# updates at build time. The image runs as uid 10001 and writes nothing: the chart mounts its
# root filesystem read-only.
FROM rust:1.89-bookworm@sha256:948f9b08a66e7fe01b03a98ef1c7568292e07ec2e4fe90d88c07bb14563c84ff AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
RUN apt-get update && apt-get upgrade -y && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home seqmon
COPY --from=build /src/target/release/validator /src/target/release/privacy-enforcer /src/target/release/feature-extractor \
     /src/target/release/anomaly-detector /src/target/release/cohort-analyzer /src/target/release/notifier /src/target/release/seqmon-admin \
     /src/target/release/fleet-simulator /src/target/release/seqmon-pipeline /src/target/release/ingest-gateway \
     /src/target/release/collector /src/target/release/alert-dispatcher /usr/local/bin/
# entrypoint STAGE ARGS...: runs the named stage binary.
RUN printf '#!/bin/sh\nset -e\nstage="$1"; shift\nexec "/usr/local/bin/$stage" "$@"\n' > /usr/local/bin/entrypoint && chmod +x /usr/local/bin/entrypoint
USER 10001
