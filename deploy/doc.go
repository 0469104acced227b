// Package deploy holds the tests of what ships beside the code: the
// Dockerfile and its build context, docker-compose.yml with its profiles,
// the Compose set-up scripts in deploy/compose, and the commands and SQL of
// README.md. It has no code of its own.
package deploy
