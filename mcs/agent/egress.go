package agent

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// portKey is one service port of an import, as the egress annotation names
// it.
type portKey struct {
	Protocol corev1.Protocol
	Port     int32
}

func (k portKey) String() string { return fmt.Sprintf("%s/%d", k.Protocol, k.Port) }

// egressAllocator hands out the local gateway's egress ports, one per
// service port of each ClusterSetIP import. The ServiceImports' annotations
// are the durable record; this is the running agent's view of them plus the
// allocations it is about to write. A port an import no longer wants stays
// taken until the import's annotation has been written without it, so the
// xDS server, which reads the annotations in the order they were written,
// never sees one port claimed by two imports.
//
// Allocation takes the lowest free port. All of an import's missing ports
// are taken together or none is: half an allocation cannot carry the
// service through the gateway and would only starve another import.
type egressAllocator struct {
	min, max int32

	mu        sync.Mutex
	owner     map[int32]string             // egress port -> import key
	active    map[string]map[portKey]int32 // import key -> its service ports' egress ports
	releasing map[string]map[portKey]int32 // dropped, freed once the import's annotation no longer lists them
	waiting   map[string]bool              // imports lacking ports because the range is full
	// Every port from min up to lowest is taken, so a search for free
	// ports starts there and allocating many imports stays linear.
	lowest int32
}

func newEgressAllocator(min, max int32) *egressAllocator {
	return &egressAllocator{min: min, max: max, lowest: min,
		owner: map[int32]string{}, active: map[string]map[portKey]int32{},
		releasing: map[string]map[portKey]int32{}, waiting: map[string]bool{}}
}

// egressClaim is what one ServiceImport's annotation said at start.
type egressClaim struct {
	key     string
	created time.Time
	ports   []brokerv1.EgressPort
}

// egressDrop is a recorded port seed gave up, and why.
type egressDrop struct {
	key, why string
}

// seed loads the allocations recorded on the ServiceImports. When two
// claim one port, the older import keeps it (ties by key) and the other
// will be given a new one; a port outside the range (the range was
// changed) is given up. It returns what it gave up, to be reported.
func (e *egressAllocator) seed(claims []egressClaim) []egressDrop {
	slices.SortFunc(claims, func(x, y egressClaim) int {
		if c := x.created.Compare(y.created); c != 0 {
			return c
		}
		return strings.Compare(x.key, y.key)
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	var dropped []egressDrop
	for _, c := range claims {
		for _, p := range c.ports {
			k := portKey{p.Protocol, p.Port}
			switch {
			case p.Egress < e.min || p.Egress > e.max:
				dropped = append(dropped, egressDrop{c.key, fmt.Sprintf("%s=%d: outside the egress range %d-%d", k, p.Egress, e.min, e.max)})
			case e.owner[p.Egress] != "":
				dropped = append(dropped, egressDrop{c.key, fmt.Sprintf("%s=%d: already held by the older import %s", k, p.Egress, e.owner[p.Egress])})
			case e.active[c.key][k] != 0:
				dropped = append(dropped, egressDrop{c.key, fmt.Sprintf("%s=%d: the import lists %s twice", k, p.Egress, k)})
			default:
				if e.active[c.key] == nil {
					e.active[c.key] = map[portKey]int32{}
				}
				e.active[c.key][k] = p.Egress
				e.owner[p.Egress] = c.key
			}
		}
	}
	return dropped
}

// egressAssignment is an import's allocation after assign.
type egressAssignment struct {
	// Ports are the import's allocated ports, in the order it lists them.
	Ports []brokerv1.EgressPort
	// Missing are its ports that have no egress port: the range is full.
	Missing []portKey
	// NewlyExhausted is true when this import has just started waiting
	// for free ports, so that it is reported once.
	NewlyExhausted bool
}

// Complete reports whether every port of the import has an egress port.
func (a egressAssignment) Complete() bool { return len(a.Missing) == 0 }

// assign gives import key an egress port for each of want, keeping the
// ports it already holds. Ports it holds for service ports it no longer
// wants are set aside until committed.
func (e *egressAllocator) assign(key string, want []portKey) egressAssignment {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur := e.active[key]
	next := map[portKey]int32{}
	var missing []portKey
	for _, k := range want {
		if _, dup := next[k]; dup {
			continue
		}
		switch {
		case cur[k] != 0:
			next[k] = cur[k]
		case e.releasing[key][k] != 0:
			// Wanted again before its release was written: take it back.
			next[k] = e.releasing[key][k]
			delete(e.releasing[key], k)
		default:
			next[k] = 0
			missing = append(missing, k)
		}
	}
	for k, p := range cur {
		if _, kept := next[k]; !kept {
			if e.releasing[key] == nil {
				e.releasing[key] = map[portKey]int32{}
			}
			e.releasing[key][k] = p
		}
	}
	if free := e.free(len(missing)); len(free) == len(missing) {
		for i, k := range missing {
			next[k] = free[i]
			e.owner[free[i]] = key
		}
		missing = nil
	}
	out := egressAssignment{}
	for k, p := range next {
		if p == 0 {
			delete(next, k)
		}
	}
	if len(next) == 0 {
		delete(e.active, key)
	} else {
		e.active[key] = next
	}
	if len(missing) > 0 {
		out.Missing = missing
		out.NewlyExhausted = !e.waiting[key]
		e.waiting[key] = true
	} else {
		delete(e.waiting, key)
	}
	listed := map[portKey]bool{}
	for _, k := range want {
		if p, ok := next[k]; ok && !listed[k] {
			out.Ports = append(out.Ports, brokerv1.EgressPort{Protocol: k.Protocol, Port: k.Port, Egress: p})
			listed[k] = true
		}
	}
	return out
}

// free finds n free ports, the lowest first, or fewer if there are not n.
func (e *egressAllocator) free(n int) []int32 {
	if n == 0 {
		return nil
	}
	var out []int32
	p := e.lowest
	for ; p <= e.max && len(out) < n; p++ {
		if e.owner[p] == "" {
			out = append(out, p)
		}
	}
	if len(out) > 0 {
		e.lowest = out[0]
	} else {
		e.lowest = p
	}
	return out
}

// freePort gives a port back.
func (e *egressAllocator) freePort(p int32) {
	delete(e.owner, p)
	e.lowest = min(e.lowest, p)
}

// committed is called once import key's annotation has been written as
// its last assignment says: the ports it dropped become free. It returns
// the imports waiting for ports, to be tried again, when any was freed.
func (e *egressAllocator) committed(key string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	freed := false
	for _, p := range e.releasing[key] {
		e.freePort(p)
		freed = true
	}
	delete(e.releasing, key)
	return e.waitingIf(freed)
}

// release frees every port of an import that no longer exists here.
func (e *egressAllocator) release(key string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	freed := false
	for _, m := range []map[portKey]int32{e.active[key], e.releasing[key]} {
		for _, p := range m {
			e.freePort(p)
			freed = true
		}
	}
	delete(e.active, key)
	delete(e.releasing, key)
	delete(e.waiting, key)
	return e.waitingIf(freed)
}

func (e *egressAllocator) waitingIf(freed bool) []string {
	if !freed {
		return nil
	}
	out := make([]string, 0, len(e.waiting))
	for k := range e.waiting {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// usage is the number of ports taken and of imports waiting for one.
func (e *egressAllocator) usage() (inUse, waiting int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.owner), len(e.waiting)
}

// ParseEgressPortRange reads --egress-ports, "MIN-MAX". The range must lie
// within 1-65535 and must not hold the gateway's mTLS ingress port.
func ParseEgressPortRange(s string) (min, max int32, err error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return 0, 0, fmt.Errorf("egress port range %q: want MIN-MAX, such as %d-%d", s, brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax)
	}
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil || l == 0 {
		return 0, 0, fmt.Errorf("egress port range %q: %q is not a port (1-65535)", s, lo)
	}
	h, err := strconv.ParseUint(hi, 10, 16)
	if err != nil || h == 0 {
		return 0, 0, fmt.Errorf("egress port range %q: %q is not a port (1-65535)", s, hi)
	}
	min, max = int32(l), int32(h)
	return min, max, checkEgressRange(min, max)
}

func checkEgressRange(min, max int32) error {
	switch {
	case min < 1 || max > 65535:
		return fmt.Errorf("egress port range %d-%d: ports are 1-65535", min, max)
	case min > max:
		return fmt.Errorf("egress port range %d-%d: the first port is above the last", min, max)
	case min <= brokerv1.DefaultGatewayIngressPort && brokerv1.DefaultGatewayIngressPort <= max:
		return fmt.Errorf("egress port range %d-%d holds the gateway's mTLS ingress port %d", min, max, brokerv1.DefaultGatewayIngressPort)
	}
	return nil
}
