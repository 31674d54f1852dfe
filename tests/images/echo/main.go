// Command echo is the echo Service of the e2e on real nodes: it answers every
// request with JSON describing what arrived (the format of
// tests/support/echo.py, which serves the process-level tests), so a test
// can see what the service relay delivered. It runs FROM scratch, as a
// static binary with the standard library only.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"strings"
	"time"
)

type echo struct {
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Headers    map[string][]string `json:"headers"`
	BodyBytes  int64               `json:"body_bytes"`
	BodySHA256 string              `json:"body_sha256"`
	Peer       string              `json:"peer"`
}

func handle(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/healthz" {
		io.WriteString(w, "ok")
		return
	}
	digest := sha256.New()
	n, err := io.Copy(digest, r.Body)
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	headers := map[string][]string{}
	for name, values := range r.Header {
		headers[strings.ToLower(name)] = values
	}
	// Go moves Host out of the header map; echo.py reports it as sent.
	headers["host"] = []string{r.Host}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(echo{
		Method:     r.Method,
		Path:       r.URL.RequestURI(),
		Headers:    headers,
		BodyBytes:  n,
		BodySHA256: hex.EncodeToString(digest.Sum(nil)),
		Peer:       r.RemoteAddr,
	})
}

func main() {
	addr := flag.String("listen", ":8080", "address to listen on")
	flag.Parse()
	server := &http.Server{
		Addr:              *addr,
		Handler:           http.HandlerFunc(handle),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("echo listening on %s", *addr)
	log.Fatal(server.ListenAndServe())
}
