# Image holding every seqmon binary. Build: docker build -t seqmon:0.1.0 .
FROM rust:1.89-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home seqmon
COPY --from=build /src/target/release/validator /src/target/release/privacy-enforcer /src/target/release/feature-extractor \
     /src/target/release/anomaly-detector /src/target/release/cohort-analyzer /src/target/release/notifier /src/target/release/seqmon-admin \
     /src/target/release/fleet-simulator /src/target/release/seqmon-pipeline /src/target/release/ingest-gateway \
     /src/target/release/collector /src/target/release/alert-dispatcher /usr/local/bin/
# entrypoint STAGE ARGS...: runs the named stage binary.
RUN printf '#!/bin/sh\nset -e\nstage="$1"; shift\nexec "/usr/local/bin/$stage" "$@"\n' > /usr/local/bin/entrypoint && chmod +x /usr/local/bin/entrypoint
USER 10001
