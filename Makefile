# Convenience targets; everything here is also a plain go command.
.PHONY: test ci dist compose-up demo

test:
	go test ./...

ci:
	bash .ci/run

demo:
	go run ./cmd/outbox-relay demo

# Static Linux binaries for the Docker image.
dist:
	CGO_ENABLED=0 GOOS=linux go build -trimpath -o dist/ ./cmd/outbox-relay ./cmd/fake-talkjs

compose-up: dist
	docker compose up --build
