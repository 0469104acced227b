package main

// The Docker image is FROM scratch: it has no CA bundle, so TLS to TalkJS
// falls back to the Mozilla roots compiled in here. Where the system has
// roots, they are used instead.
import _ "golang.org/x/crypto/x509roots/fallback"
