package migrations

// Decision is one object's entry in access, for the tests.
type Decision struct {
	Kind, Name, Definer string
	Grants              map[Party]string
}

// Decisions returns access.
func Decisions() []Decision {
	out := make([]Decision, len(access))
	for i, o := range access {
		out[i] = Decision{Kind: o.kind, Name: o.name, Definer: o.definer, Grants: o.grants}
	}
	return out
}
