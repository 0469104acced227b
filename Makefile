# Convenience targets; everything here is also a plain go or docker command.
.PHONY: test ci demo image compose-dev

test:
	go test ./...

ci:
	bash .ci/run

demo:
	go run ./cmd/outbox-relay demo

# The relay image, built from source (see Dockerfile).
image:
	docker build -t outbox-relay .

# Postgres, the fake TalkJS and two relays delivering to it.
compose-dev:
	docker compose --profile dev up --build
