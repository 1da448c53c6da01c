package main

import (
	"regexp"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What gather must never write: private keys, bearer tokens and
// kubeconfig credentials. Secrets are never read for their values; these
// rules catch the same material where it is copied into what gather does
// read (Event messages, logs, pod arguments and environment).
var redactions = []struct {
	re   *regexp.Regexp
	with string
}{
	// PEM private keys of any kind (EC, RSA, PKCS#8, OpenSSH).
	{regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----`), "[REDACTED PRIVATE KEY]"},
	// A PEM block cut short (a log line truncated mid-key) still leaks.
	{regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----[A-Za-z0-9+/=\s\\n]*`), "[REDACTED PRIVATE KEY]"},
	// base64 of PEM ("-----BEGIN"), as in kubeconfig *-data fields.
	{regexp.MustCompile(`LS0tLS1CRUdJTi[A-Za-z0-9+/=]+`), "[REDACTED PEM]"},
	// JWTs: ServiceAccount and bound tokens, OIDC tokens.
	{regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`), "[REDACTED TOKEN]"},
	// Bearer credentials in headers or messages.
	{regexp.MustCompile(`(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}`), "${1}[REDACTED]"},
	// key: value and key=value where the key names a credential.
	{regexp.MustCompile(`(?i)("?(?:token|password|passwd|client-key-data|client-key|private-?key|private_key|bearer-?token|api-?key)"?\s*[:=]\s*)("[^"\n]*"|\[REDACTED[^\]]*\]|[^\s,}]+)`), `${1}"[REDACTED]"`},
}

// redact removes credentials from data.
func redact(data []byte) []byte {
	for _, r := range redactions {
		data = r.re.ReplaceAll(data, []byte(r.with))
	}
	return data
}

// sensitiveEnv matches environment variable names that carry secrets.
var sensitiveEnv = regexp.MustCompile(`(?i)token|key|secret|password|passwd|credential`)

// scrubPod drops a pod's managed fields and the values of environment
// variables whose names suggest a secret.
func scrubPod(p *corev1.Pod) {
	scrubMeta(&p.ObjectMeta)
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range cs {
			for j := range cs[i].Env {
				if e := &cs[i].Env[j]; e.Value != "" && sensitiveEnv.MatchString(e.Name) {
					e.Value = "[REDACTED]"
				}
			}
		}
	}
}

// scrubMeta drops managed fields (noise in a bundle) and the
// last-applied annotation, which may hold a whole object with its data.
func scrubMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	delete(m.Annotations, corev1.LastAppliedConfigAnnotation)
}
