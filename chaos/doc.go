// Package chaos holds the relay's chaos suite: tests that break what a
// deployment depends on (relay processes, database connections, the
// database server, the TalkJS API, its rate limit, the input) while intents
// are being delivered, and check that nothing is lost, nothing is posted
// twice and every conversation keeps its order.
//
// The package has only tests. `go test ./chaos/` runs every fault at a
// reduced size; CHAOS_FULL=1 (or -chaos.full) runs the sizes of the
// guarantees page, and each size has its own variable and flag. See
// docs/guarantees.md for what each test proves and the figures of a run.
package chaos
