package faketalkjs

import (
	"io"
	"net/http"
	"strconv"
)

// serveAdmin serves the /_fake/ routes documented on the package. They
// need no authentication and are never faulted, so a test or an operator
// can always inspect and steer the fake, even while it is "down".
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_fake/stats":
		if r.Method != http.MethodGet {
			adminMethodNotAllowed(w, "GET")
			return
		}
		writeJSON(w, http.StatusOK, s.Stats())
	case "/_fake/faults":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, s.Faults())
		case http.MethodPut, http.MethodPatch:
			s.putFaults(w, r)
		default:
			adminMethodNotAllowed(w, "GET, PUT, PATCH")
		}
	case "/_fake/reset":
		if r.Method != http.MethodPost {
			adminMethodNotAllowed(w, "POST")
			return
		}
		clearData := false
		if v := r.URL.Query().Get("data"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeError(w, http.StatusBadRequest, "data must be a boolean")
				return
			}
			clearData = b
		}
		s.Reset()
		if clearData {
			s.Clear()
		}
		writeJSON(w, http.StatusOK, struct{}{})
	default:
		writeError(w, http.StatusNotFound, "no such admin route: "+r.URL.Path)
	}
}

// putFaults replaces (PUT) or updates (PATCH) the faults from a JSON body
// and answers with the faults now in force.
func (s *Server) putFaults(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes))
	if err != nil {
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	var f Faults
	if r.Method == http.MethodPatch {
		f = s.Faults()
	}
	if err := f.UnmarshalJSON(body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := f.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Read-modify-write is not atomic against a concurrent SetFaults; the
	// admin route is for one operator or test at a time.
	s.SetFaults(f)
	writeJSON(w, http.StatusOK, s.Faults())
}

func adminMethodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method not allowed; allowed: "+allow)
}
