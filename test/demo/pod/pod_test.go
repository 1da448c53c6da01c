package pod

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// TestServePlaintextAndLoad: the pods' echo answers a plain client with
// its line and a plaintext gRPC client (as on real nodes) on the same
// port, and Load reports each request as a JSON line after its hello.
func TestServePlaintextAndLoad(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	RegisterEcho(gs, "a")
	t.Cleanup(Serve(l, "a", gs, IsH2C))

	cluster, pod, err := Request(context.Background(), l.Addr().String(), 2*time.Second)
	if err != nil || cluster != "a" || pod != "127.0.0.1" {
		t.Fatalf("Request: %q %q %v, want a 127.0.0.1", cluster, pod, err)
	}

	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testgrpc.SimpleRequest{FillServerId: true})
	if err != nil || resp.GetServerId() != "a" || resp.GetHostname() != "127.0.0.1" {
		t.Fatalf("gRPC: %v %v, want server a at 127.0.0.1", resp, err)
	}

	r, w := io.Pipe()
	lctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Load(lctx, l.Addr().String(), 10*time.Millisecond, time.Second, w); w.Close() }()
	sc := bufio.NewScanner(r)
	var got []Result
	for len(got) < 4 && sc.Scan() {
		var res Result
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, res)
	}
	stop()
	go io.Copy(io.Discard, r)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].Hello != Hello {
		t.Fatalf("lines %+v, want the hello then three results", got)
	}
	for _, res := range got[1:] {
		if res.Cluster != "a" || res.Err != "" || res.At == 0 || res.Took <= 0 {
			t.Errorf("result %+v, want served by a", res)
		}
	}

	// Nothing listens: the request fails, and says so.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l2.Addr().String()
	l2.Close()
	if _, _, err := Request(context.Background(), addr, time.Second); err == nil {
		t.Error("a request to a closed port succeeded")
	}
}
