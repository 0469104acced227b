// Package deploy holds the tests of what ships beside the code: the
// Dockerfile and its build context, docker-compose.yml with its profiles,
// and the Compose set-up scripts in deploy/compose. It has no code of its
// own.
package deploy
