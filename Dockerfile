# kiln in a container: the one binary on a slim Debian (a shell for pipelines' `run` steps, CA
# certificates for https:// registries and webhooks), running as an unprivileged user.
#
#   docker build -t kiln:0.1.0 .
#   docker run --rm -p 8080:8080 -v kiln-home:/var/lib/kiln -e KILN_TOKEN="$(openssl rand -hex 32)" kiln:0.1.0
#   docker run ... kiln:0.1.0 up --addr 0.0.0.0:8080 --pipeline /pipelines/retrain.toml
#
# Listening beyond loopback, kiln refuses to start without a token (KILN_TOKEN or --token);
# `kiln serve --bundle` and `--registry` replicas change nothing and need none.
#
# Health: GET /v2/health/live (the process answers) and /v2/health/ready (every served model is
# loaded); the Kubernetes manifests of `kiln deploy --export` probe both. A pipeline exported with
# `kiln pipeline export` expects its files under /pipelines: build FROM this image and
# `COPY pipelines/ /pipelines/`.

FROM rust:1.95-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kiln \
 && strip target/release/kiln

FROM debian:trixie-slim
# ca-certificates follows Debian's security updates; a pinned version disappears from the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/kiln /pipelines \
 && chown 65532:65532 /var/lib/kiln
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
# The registry, pipeline runs and the prediction log live in KILN_HOME: mount a volume there.
ENV KILN_HOME=/var/lib/kiln \
    KILN_LOG_FORMAT=json
VOLUME /var/lib/kiln
WORKDIR /var/lib/kiln
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["kiln"]
CMD ["serve", "--addr", "0.0.0.0:8080"]
