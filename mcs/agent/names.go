package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
)

// Labels and annotations the agent puts on what it writes.
const (
	// fieldManager owns every field the agent applies.
	fieldManager = "isthmus-agent"
	// annotationHash holds a digest of what the agent last wrote, so an
	// unchanged object is never written again.
	annotationHash = "isthmus.dev/content-hash"
	// labelDerivedFor marks a derived Service with the ServiceImport it
	// serves.
	labelDerivedFor = "isthmus.dev/derived-for"
	// labelSliceRole tells an import's MCS slice from a derived Service's
	// slice of endpoints and from its slice pointing at the gateway.
	labelSliceRole = "isthmus.dev/slice-role"
	roleMCS        = "mcs"
	roleDerived    = "derived"
	roleGateway    = "gateway"
)

// Locality policies for the derived Service's endpoints.
const (
	LocalityLocal       = "local"
	LocalitySpread      = "spread"
	LocalityRemoteFirst = "remote-first"
)

// derivedServiceName is the name of the Service that carries an import's
// ClusterSetIP in this cluster. It is derived from the import's name so
// every agent replica agrees, and prefixed so it never takes the name of a
// Service a user might create.
func derivedServiceName(importName string) string {
	return "derived-" + digest(importName)[:10]
}

// brokerSliceName names, on the broker, the copy of one local EndpointSlice
// of an exported service. Object names may hold 253 characters; a longer
// combination is shortened with a digest.
func brokerSliceName(cluster, ns, localSlice string) string {
	return shorten(cluster + "." + ns + "." + localSlice)
}

// importSliceName names a slice of an import (role mcs) or of its derived
// Service (role derived) holding one source cluster's endpoints of one
// address family.
func importSliceName(owner, cluster string, family discoveryv1.AddressType) string {
	return shorten(owner + "-" + cluster + "-" + strings.ToLower(string(family)))
}

func shorten(name string) string {
	if len(name) <= 253 {
		return name
	}
	return name[:242] + "-" + digest(name)[:10]
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// contentHash is a digest of the parts of an object the agent owns.
func contentHash(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		// Only unmarshalable values (channels, funcs) fail; none are passed.
		panic(err)
	}
	return digest(string(data))[:16]
}
