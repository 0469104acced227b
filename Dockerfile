# The outbox-relay image, built from source: `docker build .` on a clone.
#
#   docker build -t outbox-relay .                              # the relay
#   docker build --build-arg VERSION=v1.2.3 -t outbox-relay .   # name the version
#   docker build --target fake-talkjs -t fake-talkjs .          # the fake TalkJS
#
# Without VERSION the binary reports "devel" (the build context carries no
# VCS data); `outbox-relay version` says which.

# Keep in step with the go line of go.mod (a test checks it).
ARG GO_VERSION=1.26.8
# The image Compose runs Postgres from: the setup stage reuses it for psql.
ARG POSTGRES_IMAGE=postgres:15

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Static binaries: no libc in the final image.
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=""
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/ ./cmd/outbox-relay ./cmd/fake-talkjs

# The fake TalkJS, for `docker compose --profile dev` and manual testing.
FROM scratch AS fake-talkjs
COPY --from=build /out/fake-talkjs /usr/local/bin/fake-talkjs
USER 65534:65534
EXPOSE 8090
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \
    CMD ["/usr/local/bin/fake-talkjs", "-health"]
ENTRYPOINT ["/usr/local/bin/fake-talkjs"]
CMD ["-addr", ":8090"]

# A shell, psql and the relay binary: the one-shot service that migrates and
# grants the roles. Built on the database's own image, so nothing more is
# pulled.
FROM ${POSTGRES_IMAGE} AS setup
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
USER postgres
ENTRYPOINT ["/bin/sh", "-ec"]

# The relay: one static binary on an empty base, as an unprivileged user.
# TLS roots are compiled in (golang.org/x/crypto/x509roots/fallback).
FROM scratch AS relay
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
USER 65534:65534
# In a container the listener must face the container's network, and the
# health check needs a fixed port.
ENV OUTBOX_HTTP_ADDR=:9090
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/outbox-relay", "health"]
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
