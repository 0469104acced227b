package provider_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/provider"
)

// TalkJS reads a field sent as null as "clear it", so no field of a call's
// body may ever be encoded as null: optional fields left empty are left out.
func TestEmptyBodiesHoldNoNull(t *testing.T) {
	t.Parallel()
	for _, v := range []any{provider.User{}, provider.Conversation{}, provider.Message{}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "null") {
			t.Errorf("%T{} encodes as %s: holds a null", v, b)
		}
	}
}
