package main

import (
	"fmt"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/xds/identity"
)

// pki is setup.Certificates done with xds/identity: broker install and
// join move PEM, this makes and checks it.
type pki struct {
	rootTTL, intermediateTTL time.Duration
	// now is the time renewal is judged at; tests move it.
	now func() time.Time
}

func newPKI(rootTTL, intermediateTTL time.Duration) *pki {
	return &pki{rootTTL: rootTTL, intermediateTTL: intermediateTTL, now: time.Now}
}

func material(ca *identity.CA) (setup.CAMaterial, error) {
	cert, key, bundle, err := ca.PEM()
	return setup.CAMaterial{Cert: cert, Key: key, Bundle: bundle}, err
}

func (p *pki) NewRoot(clustersetDomain string) (setup.CAMaterial, error) {
	ca, err := identity.NewRoot(clustersetDomain, p.rootTTL)
	if err != nil {
		return setup.CAMaterial{}, err
	}
	return material(ca)
}

func (p *pki) ImportRoot(clustersetDomain string, cert, key []byte) (setup.CAMaterial, error) {
	ca, err := identity.LoadRoot(clustersetDomain, cert, key, nil)
	if err != nil {
		return setup.CAMaterial{}, fmt.Errorf("importing the operator's root CA: %w", err)
	}
	return material(ca)
}

func (p *pki) IssueIntermediate(root setup.CAMaterial, clustersetDomain, cluster string) (setup.CAMaterial, error) {
	ca, err := identity.LoadRoot(clustersetDomain, root.Cert, root.Key, root.Bundle)
	if err != nil {
		return setup.CAMaterial{}, fmt.Errorf("loading the clusterset root: %w", err)
	}
	inter, err := ca.IssueIntermediate(cluster, p.intermediateTTL)
	if err != nil {
		return setup.CAMaterial{}, err
	}
	return material(inter)
}

func (p *pki) RenewalReason(current setup.CAMaterial, bundle []byte, clustersetDomain, cluster string) string {
	ca, err := identity.LoadCA(current.Cert, current.Key, bundle)
	if err != nil {
		return fmt.Sprintf("the current one is unusable: %v", err)
	}
	if want := brokerv1.TrustDomain(cluster, clustersetDomain); !ca.IsIntermediate() || ca.Domain() != want {
		return fmt.Sprintf("the current one is %s, not the intermediate of %s", ca, want)
	}
	if err := ca.ConstraintProblem(); err != nil {
		// A root made before its constraint had the leading dot: Envoy
		// rejects this intermediate's leaves. Issuing again under the
		// rotated root fixes it; under the old root, issuing fails and
		// says to rotate.
		return fmt.Sprintf("the current one is rejected by RFC 5280 verifiers: %v", err)
	}
	c := ca.Certificate()
	if half := c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2); !p.now().Before(half) {
		return fmt.Sprintf("the current one passed half of its life at %s", half.UTC().Format(time.RFC3339))
	}
	return ""
}
