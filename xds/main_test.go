package xds

import (
	"os"
	"os/exec"
	"testing"
)

// callCredsEnv turns on call credentials in gRPC's xDS bootstrap (gRFC
// A97), which the proxyless clients in these tests send their tokens
// with. gRPC reads it once at start, so the test binary runs itself again
// with it set.
const callCredsEnv = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"

func TestMain(m *testing.M) {
	if os.Getenv(callCredsEnv) != "true" {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), callCredsEnv+"=true")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			if exit, ok := err.(*exec.ExitError); ok {
				os.Exit(exit.ExitCode())
			}
			os.Stderr.WriteString("running the tests with " + callCredsEnv + "=true: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
