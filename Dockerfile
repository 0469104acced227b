# The outbox-relay image: the two static binaries on an empty base, so the
# only image Compose pulls is the official postgres one. Build the binaries
# first (this is what `make dist` does):
#
#   CGO_ENABLED=0 GOOS=linux go build -trimpath -o dist/ ./cmd/outbox-relay ./cmd/fake-talkjs
#
# TLS roots are compiled into outbox-relay (golang.org/x/crypto/x509roots/fallback).
FROM scratch
COPY dist/outbox-relay dist/fake-talkjs /usr/local/bin/
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
