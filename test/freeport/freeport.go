// Package freeport hands out loopback ports for test servers, each from a
// block of ports that this process alone draws from.
//
// Outside the kernel's ephemeral range: a server on an ephemeral port can
// meet a client that the kernel autobinds to the same port. dig sets
// SO_REUSEPORT on its socket, so as root it may share a test server's
// port, and its connected socket then receives its own query back (seen
// once as "query response not set").
//
// A block per process: `go test` runs two packages at once, each its own
// process, and a port free when it is checked is only bound later by the
// server it is handed to (a harness starts etcd and kube-apiserver on
// ports it picked seconds before they bind them). Drawn from one shared
// range, another process could pick the same port in between; an etcd
// that lost its port to another harness's etcd leaves its apiserver
// storing into the other one's, under the same key prefixes. Each block
// is reserved by a lock (flock) on a file of its own, held while the
// process runs and dropped by the kernel however it ends.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// The ports handed out: below Linux's default ephemeral range
// (32768-60999) and above the well-known and common fixed ports, in
// blocks of blockSize (a clusterset of 15 members takes 68 ports).
const (
	low       = 20000
	high      = 32768 // exclusive
	blockSize = 256
	blocks    = (high - low) / blockSize
)

// lockDir holds the blocks' lock files (a variable for the test, which
// locks blocks of its own there).
var lockDir = filepath.Join(os.TempDir(), "isthmus-ports")

// block is a block of ports this process holds.
type block struct {
	first int      // its first port
	lock  *os.File // its lock file, kept referenced: a collected File closes its descriptor, and the lock goes with it
}

var pool struct {
	mu   sync.Mutex
	held []block
	next int // index into the held ports of the next to try
}

// Take returns a loopback port that was free for TCP and UDP when
// checked, from a block no other process draws from. Within the process
// the ports go round the held blocks in turn, so a port comes back only
// after every other port of them has been handed out since.
func Take() (int, error) {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	for {
		for range len(pool.held) * blockSize {
			i := pool.next
			pool.next = (pool.next + 1) % (len(pool.held) * blockSize)
			port := pool.held[i/blockSize].first + i%blockSize
			if free(port) {
				return port, nil
			}
		}
		// None free (or no block yet): reserve one more.
		if err := reserve(); err != nil {
			return 0, err
		}
	}
}

// reserve locks a block no process holds, starting from a random one so
// that processes starting together spread out.
func reserve() error {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("freeport: %w", err)
	}
	start := rand.IntN(blocks)
	for k := range blocks {
		first := low + (start+k)%blocks*blockSize
		if slices.ContainsFunc(pool.held, func(b block) bool { return b.first == first }) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("%d-%d.lock", first, first+blockSize-1)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("freeport: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		if len(pool.held) == 0 {
			pool.next = rand.IntN(blockSize)
		} else {
			pool.next = len(pool.held) * blockSize
		}
		pool.held = append(pool.held, block{first, f})
		return nil
	}
	return fmt.Errorf("freeport: every block of ports in [%d, %d) is held by another process or in use", low, high)
}

// Addr returns 127.0.0.1:<port> for a port from Take.
func Addr(t testing.TB) string {
	t.Helper()
	port, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// Port is Addr's port alone.
func Port(t testing.TB) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(Addr(t))
	return port
}

func free(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
