package cluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ports are drawn below Linux's ephemeral range (32768 and up), so an
// outgoing connection never holds a port the harness restarts a server on.
const (
	portLow  = 20000
	portHigh = 32000
)

// portSet reserves loopback TCP ports by holding listeners on them until the
// processes that will use them are about to start.
type portSet struct {
	held []net.Listener
}

func (s *portSet) take() (int, error) {
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		s.held = append(s.held, l)
		return port, nil
	}
	return 0, fmt.Errorf("no free loopback port in [%d, %d)", portLow, portHigh)
}

// release frees every held port for the processes to bind.
func (s *portSet) release() {
	for _, l := range s.held {
		l.Close()
	}
	s.held = nil
}
