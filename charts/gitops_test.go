package charts_test

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

var (
	ctlOnce sync.Once
	ctlPath string
	ctlErr  error
)

// isthmusctl builds the real isthmusctl from this checkout, once, and
// checks that Go stamped it with the version of the commit it was built
// from: no binary says "(devel)".
func isthmusctl(t *testing.T) string {
	t.Helper()
	ctlOnce.Do(func() {
		// In the harness's directory, which its Stop removes.
		dir, err := os.MkdirTemp(clusters.Dir, "isthmusctl-")
		if err != nil {
			ctlErr = err
			return
		}
		ctlPath = filepath.Join(dir, "isthmusctl")
		// As make release builds it (test/release/build.sh), sharing its
		// and make image's build cache; -buildvcs=true, as a machine may
		// say false in GOFLAGS.
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=true", "-ldflags", "-s -w", "-o", ctlPath, "../cmd/isthmusctl")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			ctlErr = err
			t.Logf("go build: %s", out)
		}
	})
	if ctlErr != nil {
		t.Fatalf("building isthmusctl: %v", ctlErr)
	}
	return ctlPath
}

// TestBuiltBinaryCarriesTheVCSVersion: a plain `go build` of isthmusctl
// carries the main module's version and revision from git (what
// cmd/internal/buildinfo reports), not "(devel)".
func TestBuiltBinaryCarriesTheVCSVersion(t *testing.T) {
	if fi, err := os.Stat("../.git"); err == nil && !fi.IsDir() {
		// go build finds a repository only where .git is a directory
		// (cmd/go/internal/vcs), so a linked worktree's builds carry no
		// stamp; CI and releases build from a clone.
		t.Skip("a git worktree: go build stamps no VCS information here; run this in a clone")
	}
	bi, err := buildinfo.ReadFile(isthmusctl(t))
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if v := bi.Main.Version; v == "" || v == "(devel)" || !strings.HasPrefix(v, "v") {
		t.Errorf("isthmusctl's version is %q, want one from git", v)
	}
	if got := settings["vcs.revision"]; got != strings.TrimSpace(string(head)) {
		t.Errorf("isthmusctl's vcs.revision is %q, want HEAD %s", got, head)
	}
}

// ctl runs the built isthmusctl and returns its stdout and stderr.
func ctl(t *testing.T, ctx context.Context, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, isthmusctl(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("isthmusctl %s\n%s", strings.Join(args, " "), stderr.String())
	return stdout.String(), stderr.String(), err
}

// TestFirstContactAndGitOps runs on a clusterset of its own (a broker and
// two members, none joined):
//
//   - the README's sequence: the broker from its Helm chart, then
//     `isthmusctl join` of member1, which finds no clusterset root (the
//     chart makes no keys) and makes it, then issues member1's
//     intermediate;
//   - the GitOps path for member2: `isthmusctl join --dry-run` writes
//     nothing to it and prints its manifests; the member chart rendered as
//     Argo CD and Fleet render it (helm template with --include-crds and
//     --kube-version, no cluster access) with broker.existingSecret naming
//     the credential under a name of the GitOps repository's own; all of it
//     applied to member2's apiserver, where the credential authenticates to
//     the broker as member2 and the roles may read it.
func TestFirstContactAndGitOps(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	helm := findHelm(t)
	kc := cs.Kubeconfig

	out, err := exec.CommandContext(ctx, helm, "install", "isthmus-broker", brokerChart, "--kubeconfig", kc, "--kube-context", "broker").CombinedOutput()
	if err != nil {
		t.Fatalf("helm install isthmus-broker: %v\n%s", err, out)
	}
	m1 := cs.Members[0]
	stdout, _, err := ctl(t, ctx, "join", "--kubeconfig", kc, "--context", "member1", "--broker-context", "broker", "--cluster-id", "east",
		"--pod-cidrs", m1.PodCIDR.String(), "--service-cidrs", m1.ServiceCIDR.String())
	if err != nil {
		t.Fatalf("join after the broker chart: %v\n%s", err, stdout)
	}
	for _, want := range []string{"secrets/isthmus-root-ca created (broker)", "configmaps/isthmus-trust-bundle created (broker)", "secrets/isthmus-ca created (member)", "cluster east joined"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("join's report lacks %q:\n%s", want, stdout)
		}
	}

	// GitOps: member2's manifests, written to nothing but a directory.
	m2 := cs.Members[1]
	dir := t.TempDir()
	if _, _, err := ctl(t, ctx, "join", "--dry-run", "--output-dir", dir, "--kubeconfig", kc, "--context", "member2", "--broker-context", "broker",
		"--cluster-id", "west", "--pod-cidrs", m2.PodCIDR.String(), "--service-cidrs", m2.ServiceCIDR.String()); err != nil {
		t.Fatalf("join --dry-run: %v", err)
	}
	if _, err := m2.Client.CoreV1().Namespaces().Get(ctx, "isthmus-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("join --dry-run wrote to the member: namespace isthmus-system: %v", err)
	}
	yamlOut, _, err := ctl(t, ctx, "join", "--dry-run", "-o", "yaml", "--kubeconfig", kc, "--context", "member2", "--broker-context", "broker", "--cluster-id", "west")
	if err != nil {
		t.Fatalf("join --dry-run -o yaml: %v", err)
	}
	joinDocs := decode(t, []byte(yamlOut))
	var kinds []string
	for _, d := range joinDocs {
		kinds = append(kinds, d.GetKind()+"/"+d.GetName())
	}
	want := "CustomResourceDefinition/serviceexports.multicluster.x-k8s.io CustomResourceDefinition/serviceimports.multicluster.x-k8s.io " +
		"CustomResourceDefinition/clusterproperties.about.k8s.io ClusterProperty/cluster.clusterset.k8s.io Namespace/isthmus-system " +
		"Secret/isthmus-broker Secret/isthmus-broker-xds Secret/isthmus-broker-tunnel Secret/isthmus-ca ConfigMap/isthmus-trust-bundle"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("join --dry-run printed %s\nwant %s", got, want)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) != len(joinDocs) {
		t.Fatalf("--output-dir holds %d files (%v), want %d", len(files), err, len(joinDocs))
	}
	// The GitOps repository keeps the credentials under a name of its own
	// (the xDS server's and the tunnel's with -xds and -tunnel after it);
	// a second dry run keeps the tokens the first issued, once applied.
	const credName = "west-broker-credential"
	for _, d := range joinDocs {
		if name, ok := strings.CutPrefix(d.GetName(), "isthmus-broker"); d.GetKind() == "Secret" && ok {
			d.SetName(credName + name)
		}
	}

	// The member chart as Argo CD renders it: no cluster access.
	args := []string{"template", chartRelease, memberChart, "--namespace", "isthmus-system", "--include-crds", "--kube-version", "1.37.2",
		"--set", "clusterID=west", "--set", "broker.existingSecret=" + credName,
		"--set", "podCIDRs={" + m2.PodCIDR.String() + "}", "--set", "serviceCIDRs={" + m2.ServiceCIDR.String() + "}"}
	rendered, err := exec.CommandContext(ctx, helm, args...).Output()
	if err != nil {
		t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
	}
	chartDocs := decode(t, rendered)
	// Both carry the MCS CRDs; a GitOps tool applies each once.
	seen := map[string]bool{}
	var all []*unstructured.Unstructured
	for _, d := range append(joinDocs, chartDocs...) {
		if key := d.GetKind() + "/" + d.GetName(); !seen[key] {
			seen[key] = true
			all = append(all, d)
		}
	}
	apply := dryRunApplier(t, m2.Config)
	for _, d := range all {
		if d.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if err := apply(ctx, d, false); err != nil {
			t.Fatalf("applying %s: %v", d.GetName(), err)
		}
	}
	waitForCRDs(t, ctx, m2)
	apply = dryRunApplier(t, m2.Config)
	for _, d := range all {
		if d.GetKind() == "CustomResourceDefinition" {
			continue
		}
		if err := apply(ctx, d, false); err != nil {
			t.Errorf("applying %s %s: %v", d.GetKind(), d.GetName(), err)
		}
	}

	// Each role's credential, as the role reads it, is member2's identity
	// for that role on the broker.
	for secret, identity := range map[string]string{credName: brokerv1.MemberServiceAccount("west"),
		credName + "-xds": brokerv1.XDSServiceAccount("west"), credName + "-tunnel": brokerv1.TunnelServiceAccount("west")} {
		s, err := m2.Client.CoreV1().Secrets("isthmus-system").Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.RESTConfigFromKubeConfig(s.Data["kubeconfig"])
		if err != nil {
			t.Fatal(err)
		}
		asMember, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		review, err := asMember.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("the GitOps credential %s does not authenticate to the broker: %v", secret, err)
		}
		if got, want := review.Status.UserInfo.Username, "system:serviceaccount:isthmus-broker:"+identity; got != want {
			t.Errorf("the GitOps credential %s is %s, want %s", secret, got, want)
		}
	}
	// The roles are told their credential's name and may read it, and the CA.
	for _, role := range []string{"agent", "xds", "tunnel"} {
		for _, secret := range map[string][]string{"agent": {credName, credName + "-xds", credName + "-tunnel"}, "xds": {credName + "-xds", "isthmus-ca"}, "tunnel": {credName + "-tunnel"}}[role] {
			sar, err := m2.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: "system:serviceaccount:isthmus-system:isthmus-" + role, Groups: []string{"system:serviceaccounts"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "isthmus-system", Verb: "get", Resource: "secrets", Name: secret}}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !sar.Status.Allowed {
				t.Errorf("the %s role may not read Secret %s", role, secret)
			}
		}
	}
	agent := find(chartDocs, "Deployment", "isthmus-agent")
	if agent == nil {
		t.Fatal("the chart renders no isthmus-agent Deployment")
	}
	y, _ := yaml.Marshal(agent.Object)
	if !strings.Contains(string(y), "name: ISTHMUS_BROKER_SECRET\n") || !strings.Contains(string(y), "value: "+credName+"\n") {
		t.Errorf("the agent is not told the credential's Secret:\n%s", y)
	}

	// Once applied, a second dry run gives the same credential.
	again, _, err := ctl(t, ctx, "join", "--dry-run", "-o", "yaml", "--kubeconfig", kc, "--context", "member2", "--broker-context", "broker", "--cluster-id", "west")
	if err != nil {
		t.Fatal(err)
	}
	if first, second := secretData(t, joinDocs, "isthmus-ca"), secretData(t, decode(t, []byte(again)), "isthmus-ca"); first == "" || first != second {
		t.Error("a second dry run issued another intermediate, though the first is applied and good")
	}
}

func secretData(t *testing.T, docs []*unstructured.Unstructured, name string) string {
	t.Helper()
	for _, d := range docs {
		if d.GetKind() == "Secret" && d.GetName() == name {
			v, _, _ := unstructured.NestedString(d.Object, "data", "tls.crt")
			return v
		}
	}
	return ""
}

// waitForCRDs waits until the member serves the MCS API and ClusterProperty.
func waitForCRDs(t *testing.T, ctx context.Context, m *cluster.Cluster) {
	t.Helper()
	for _, gv := range []string{"multicluster.x-k8s.io/v1beta1", "about.k8s.io/v1alpha1"} {
		for {
			if _, err := m.Client.Discovery().ServerResourcesForGroupVersion(gv); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the member does not serve %s", gv)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}
