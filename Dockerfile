# callpay: multi-stage build with cargo-chef so dependency layers are cached between builds.
# Build:  docker build -t callpay .
# Run:    docker run -p 8080:8080 -e CALLPAY__SERVER__LISTEN=0.0.0.0:8080 \
#           -e CALLPAY__AUTH__SECRET=... -e CALLPAY__STRIPE__SECRET_KEY=... \
#           -e CALLPAY__STRIPE__PUBLISHABLE_KEY=... -e CALLPAY__STRIPE__CLIENT_ID=... \
#           -e CALLPAY__STRIPE__WEBHOOK_SECRETS=whsec_... \
#           -e CALLPAY__DATABASE__URL=postgres://... -e CALLPAY__BUS__REDIS_URL=redis://... callpay
# The image carries no Stripe simulator. For the offline demo, build with the demo feature:
#   docker build --build-arg FEATURES=demo -t callpay-demo .
#   docker run -p 8080:8080 callpay-demo demo --listen 0.0.0.0:8080 --data-dir /data

FROM rust:1.95-bookworm AS chef
RUN cargo install --locked cargo-chef@0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG FEATURES=""
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json -p callpay --no-default-features --features "$FEATURES"
COPY . .
RUN cargo build --release -p callpay --locked --no-default-features --features "$FEATURES" \
    && strip target/release/callpay

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data callpay \
    && mkdir -p /data && chown callpay /data
COPY --from=builder /src/target/release/callpay /usr/local/bin/callpay
USER callpay
WORKDIR /data
# Probes: GET /healthz (process up) and GET /readyz (the store answers).
EXPOSE 8080
ENTRYPOINT ["callpay"]
CMD ["serve"]
