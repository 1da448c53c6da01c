// Command testserver is the workload image of test/cluster's real-node
// tests. With no arguments it serves HTTP on :8080 ("/" answers the pod's
// name, "/healthz" ok) and logs each request to stdout, for kubectl logs.
// Its subcommands are what a test runs in the shell-less image with exec:
//
//	testserver whoami          uid, POD_IP and the mounted token's size
//	testserver apicheck        the apiserver through the kubernetes Service, with the pod's token
//	testserver get URL         an HTTP GET, printing status and body
//	testserver resolve NAME    the addresses NAME resolves to through the pod's resolv.conf
//
// `testserver load URL` is a client for upgrade tests, run as a pod's
// command: it GETs URL every 50 ms on a new connection (so each request
// resolves the name and opens a TCP connection), and every 50 ms on one
// long-lived keep-alive connection, and serves its counters as JSON on
// :8080/stats (requests, failures with the last errors, the longest
// request, and how many connections the long-lived client had to open).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	log.SetFlags(0)
	args := os.Args[1:]
	if len(args) == 0 {
		serve()
		return
	}
	var err error
	switch {
	case args[0] == "whoami":
		err = whoami()
	case args[0] == "apicheck":
		err = apicheck()
	case args[0] == "get" && len(args) == 2:
		err = get(args[1])
	case args[0] == "resolve" && len(args) == 2:
		err = resolve(args[1])
	case args[0] == "load" && len(args) == 2:
		err = load(args[1])
	default:
		err = fmt.Errorf("usage: testserver [whoami | apicheck | get URL | resolve NAME | load URL]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}

func serve() {
	name, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	log.Printf("serving on :8080 as %s", name)
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

func whoami() error {
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return err
	}
	fmt.Printf("uid=%d pod_ip=%s token_bytes=%d\n", os.Getuid(), os.Getenv("POD_IP"), len(token))
	return nil
}

// apicheck calls the apiserver the way in-cluster clients do: the
// kubernetes Service from the environment, the mounted CA and token.
func apicheck() error {
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s/ca.crt", saDir)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	host := net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	for _, path := range []string{"/version", "/api/v1/namespaces/kube-system/secrets"} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Printf("GET %s %d\n", path, resp.StatusCode)
	}
	return nil
}

func get(url string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Printf("%d %s", resp.StatusCode, body)
	return nil
}

func resolve(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(addrs, " "))
	return nil
}
