package cluster

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// A member's control plane runs on the host's loopback and its real node
// in a network namespace of its own, which has no route to the host. Two
// relays in the test process join them, each holding a socket in the
// node's namespace (sockets keep the namespace they were made in):
//
//   - node → apiserver: a listener on the node's IP and the apiserver's
//     port inside the namespace, relayed to the apiserver on loopback. The
//     apiserver advertises the node's IP, so the kubernetes Service's
//     endpoint is this listener, for the kubelet, kube-proxy and pods.
//   - apiserver → node: an HTTP CONNECT proxy on a Unix socket (a path,
//     reachable from any namespace) that the apiserver's egress selector
//     sends its "cluster" traffic to: exec, logs and port-forward to the
//     kubelet, and the proxy subresource to pods and Services.

// relayIntoNode serves addr inside the network namespace of process pid
// by relaying each connection to target on the host.
func relayIntoNode(pid int, addr, target string) (stop func(), err error) {
	var l net.Listener
	if err := netnstest.RunPID(pid, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		return nil, err
	}
	go acceptLoop(l, func(in net.Conn) {
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			in.Close()
			return
		}
		splice(in, out)
	})
	return func() { l.Close() }, nil
}

// connectProxy serves HTTP CONNECT on the Unix socket path, dialing each
// requested address inside the network namespace of process pid.
func connectProxy(path string, pid int) (stop func(), err error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	go acceptLoop(l, func(in net.Conn) {
		br := bufio.NewReader(in)
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect {
			in.Close()
			return
		}
		var out net.Conn
		err = netnstest.RunPID(pid, func() (err error) {
			out, err = net.DialTimeout("tcp", req.Host, 5*time.Second)
			return err
		})
		if err != nil {
			_, _ = io.WriteString(in, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
			in.Close()
			return
		}
		if _, err := io.WriteString(in, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			in.Close()
			out.Close()
			return
		}
		// The client may have sent bytes behind the request already.
		splice(bufferedConn{in, br}, out)
	})
	return func() { l.Close(); _ = os.Remove(path) }, nil
}

func acceptLoop(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, a); done <- struct{}{} }()
	go func() { _, _ = io.Copy(a, b); done <- struct{}{} }()
	<-done
	a.Close()
	b.Close()
	<-done
}

// bufferedConn reads through the bufio.Reader that read the CONNECT
// request, so nothing it buffered is lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
