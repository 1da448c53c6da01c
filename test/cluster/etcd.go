package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/isthmus-dev/isthmus/test/freeport"
)

// etcd is one etcd server; several apiservers may share it under distinct
// key prefixes.
type etcd struct {
	proc       *process
	clientURL  string
	prefixUsed map[string]bool
}

func (cs *Clusterset) newEtcd(name string, bins binaries) (*etcd, error) {
	client, err := freeport.Take()
	if err != nil {
		return nil, err
	}
	peer, err := freeport.Take()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cs.Dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	return &etcd{
		clientURL:  clientURL,
		prefixUsed: map[string]bool{},
		proc: &process{
			name: name,
			bin:  bins.etcd,
			args: []string{
				"--name=" + name,
				"--data-dir=" + filepath.Join(dir, "data"),
				"--listen-client-urls=" + clientURL,
				"--advertise-client-urls=" + clientURL,
				"--listen-peer-urls=" + peerURL,
				"--initial-advertise-peer-urls=" + peerURL,
				"--initial-cluster=" + fmt.Sprintf("%s=%s", name, peerURL),
				// Test data need not survive a power cut; fsync would make
				// every write wait on the disk.
				"--unsafe-no-fsync",
				"--quota-backend-bytes=2147483648",
				"--log-level=warn",
			},
			logPath: filepath.Join(dir, "etcd.log"),
			reg:     cs.reg,
		},
	}, nil
}
