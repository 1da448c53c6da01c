package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestClustersetCommands runs the built isthmusctl as a person would
// against a broker and two members whose agents (the built `isthmus
// agent`) run beside it: every command's -h exits 0, the kubectl plugin
// name behaves the same, status --contexts puts both members' views in one
// table and exits 1 while anything is wrong, --wait waits for health or
// times out with 1, disagreements are marked, version warns of skew,
// diagnose asks a real `isthmus dns` and exits 1 on a failed check, and
// gather writes a bundle with no credential in it.
func TestClustersetCommands(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 2,
		Localities: []cluster.Locality{{Region: "eu", Zone: "eu-1"}, {Region: "us", Zone: "us-1"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	kc := cs.Kubeconfig
	ctl := func(args ...string) result {
		t.Helper()
		return exe(t, "isthmusctl", append(args, "--kubeconfig", kc)...)
	}
	mustCtl := func(args ...string) result {
		t.Helper()
		r := ctl(args...)
		if r.code != 0 {
			t.Fatalf("isthmusctl %s: %s", strings.Join(args, " "), r)
		}
		return r
	}

	for _, c := range [][]string{{}, {"broker", "install"}, {"join"}, {"tunnel", "rotate-key"}, {"export"}, {"unexport"}, {"status"},
		{"diagnose"}, {"gather"}, {"verify"}, {"version"}, {"demo"}, {"completion", "zsh"}} {
		if r := exe(t, "isthmusctl", append(c, "-h")...); r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("isthmusctl %s -h: %s", strings.Join(c, " "), r)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if r := exe(t, "isthmusctl", "completion", shell); r.code != 0 || !strings.Contains(r.stdout, "isthmusctl") {
			t.Errorf("completion %s: %s", shell, r)
		}
	}
	if r := exe(t, "kubectl-isthmus", "status", "-h"); r.code != 0 || !strings.Contains(r.stdout, "kubectl isthmus status") {
		t.Errorf("kubectl-isthmus status -h does not name itself the kubectl plugin: %s", r)
	}
	if r := exe(t, "isthmusctl", "frobnicate"); r.code != exitError || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("an unknown command: %s", r)
	}

	mustCtl("broker", "install", "--context", "broker")
	ids := []string{"a", "b"}
	for i, m := range cs.Members {
		mustCtl("join", "--context", m.Name, "--broker-context", "broker", "--cluster-id", ids[i],
			"--pod-cidrs", m.PodCIDR.String(), "--service-cidrs", m.ServiceCIDR.String())
	}
	// join writes where it must: -n is refused, not silently ignored.
	if r := ctl("join", "-n", "elsewhere", "--context", "member1", "--broker-context", "broker"); r.code != exitError || !strings.Contains(r.stderr, "-n does not apply") {
		t.Errorf("join -n: %s", r)
	}
	for _, m := range cs.Members {
		if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// -n before or after the name, as kubectl takes it.
	mustCtl("-n", "shop", "export", "web", "--context", "member1")
	mustCtl("export", "web", "--context", "member2", "--namespace", "shop")
	both := "member1,member2"

	// No agent runs yet: the exports have no conditions, so status says
	// so and exits 1, and --wait gives up at its timeout with 1.
	r := ctl("status", "--contexts", both)
	if r.code != exitChecksFailed || !strings.Contains(r.stdout, "export shop/web in a: Valid=Unknown") {
		t.Errorf("status before the agents run: %s", r)
	}
	start := time.Now()
	if r := ctl("status", "--contexts", both, "--wait", "--timeout", "3s"); r.code != exitChecksFailed || !strings.Contains(r.stderr, "not healthy after 3s") {
		t.Errorf("status --wait --timeout 3s: %s", r)
	} else if took := time.Since(start); took > time.Minute {
		t.Errorf("status --wait --timeout 3s took %v", took)
	}

	agents := map[string]func(){}
	metrics := map[string]string{}
	for i, m := range cs.Members {
		metrics[ids[i]] = freeAddr(t)
		agents[ids[i]] = daemon(t, metrics[ids[i]], "agent", "--kubeconfig", m.Kubeconfig, "--region", m.Locality.Region, "--zone", m.Locality.Zone,
			"--pod-cidrs", m.PodCIDR.String(), "--service-cidrs", m.ServiceCIDR.String(),
			"--lease-duration", "2s", "--withdraw-after", "30s", "--leader-elect=false")
	}
	// --wait returns 0 once both are healthy and each imports web from both.
	r = ctl("status", "--contexts", both, "--wait", "--timeout", "3m")
	if r.code != 0 || !strings.Contains(r.stderr, "healthy after") {
		t.Fatalf("status --wait with the agents running: %s", r)
	}
	r = ctl("status", "--contexts", both, "-o", "json")
	var set setReport
	if err := json.Unmarshal([]byte(r.stdout), &set); err != nil || r.code != 0 {
		t.Fatalf("status --contexts -o json: %v\n%s", err, r)
	}
	if len(set.Views) != 2 || set.Views[0].Cluster != "a" || set.Views[1].Cluster != "b" || len(set.Brokers) != 1 {
		t.Fatalf("views %+v, brokers %v", set.Views, set.Brokers)
	}
	if len(set.Services) != 1 || fmt.Sprint(set.Services[0].ExportedBy) != "[a b]" || fmt.Sprint(set.Services[0].ImportedIn) != "[[a b] [a b]]" {
		t.Errorf("services %+v, want shop/web exported by and imported in both from both", set.Services)
	}
	for _, c := range set.Views[0].Clusters {
		if c.Health != "Healthy" || c.Version == "" {
			t.Errorf("cluster %+v: want Healthy with its agent's version", c)
		}
	}
	mustCtl("status", "--contexts", both)
	mustCtl("status", "--contexts", both, "-o", "wide")
	// The kubectl plugin name is the same program.
	if r := exe(t, "kubectl-isthmus", "status", "--contexts", both, "--kubeconfig", kc); r.code != 0 || !strings.Contains(r.stdout, "no problems found") {
		t.Errorf("kubectl-isthmus status: %s", r)
	}
	// One member's view, and -n limiting it.
	r = mustCtl("status", "--context", "member2", "-n", "shop", "-o", "yaml")
	if !strings.Contains(r.stdout, "cluster: b") || !strings.Contains(r.stdout, "name: web") {
		t.Errorf("status --context member2 -n shop -o yaml: %s", r)
	}
	if r := ctl("status", "--context", "member2", "-n", "elsewhere", "-o", "json"); r.code != 0 || strings.Contains(r.stdout, `"web"`) {
		t.Errorf("status -n elsewhere still lists shop/web: %s", r)
	}

	// diagnose asks a real resolver, by UDP, and exits 1 because no
	// tunnel runs between a and b; the DNS answer is the ClusterSetIP.
	dnsAddr := freeAddr(t)
	daemon(t, freeAddr(t), "dns", "--kubeconfig", cs.Members[0].Kubeconfig, "--listen", dnsAddr)
	for _, args := range [][]string{{"diagnose", "web.shop"}, {"diagnose", "web", "-n", "shop"}} {
		var findings []finding
		var r result
		eventually(t, time.Minute, "diagnose's DNS check", func() error {
			r = ctl(append(args, "--context", "member1", "--dns-server", dnsAddr, "--dns-service", "", "-o", "json")...)
			findings = nil
			if err := json.Unmarshal([]byte(r.stdout), &findings); err != nil {
				return fmt.Errorf("%v: %s", err, r)
			}
			if i := slices.IndexFunc(findings, func(f finding) bool { return f.Check == "dns" }); i < 0 || !findings[i].OK {
				return fmt.Errorf("dns check: %+v", findings)
			}
			return nil
		})
		i := slices.IndexFunc(findings, func(f finding) bool { return f.Check == "dns" })
		if !strings.Contains(findings[i].Detail, "(UDP)") {
			t.Errorf("dns was not answered over UDP: %+v", findings[i])
		}
		if r.code != exitChecksFailed || !strings.Contains(r.stderr, "tunnel to b") {
			t.Errorf("diagnose with no tunnel: want exit 1 naming the tunnel check: %s", r)
		}
	}
	// With no --dns-server, diagnose finds the resolver's Service and
	// port-forwards to its pod: KWOK runs no kubelet to forward to, so the
	// check fails and names the pod it tried.
	resolverService(t, ctx, cs.Members[0])
	r = ctl("diagnose", "web.shop", "--context", "member1", "-o", "json")
	var findings []finding
	_ = json.Unmarshal([]byte(r.stdout), &findings)
	if i := slices.IndexFunc(findings, func(f finding) bool { return f.Check == "dns" }); i < 0 || findings[i].OK || !strings.Contains(findings[i].Detail, "isthmus-dns-0") {
		t.Errorf("diagnose through the resolver's Service: %s", r)
	}

	// b's agent stops and a exports another service: b is marked
	// unhealthy and as missing the new import, and status exits 1.
	agents["b"]()
	for _, m := range cs.Members[:1] {
		if _, err := m.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "late"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mustCtl("export", "late", "-n", "shop", "--context", "member1")
	eventually(t, 2*time.Minute, "b marked unhealthy and missing shop/late", func() error {
		r = ctl("status", "--contexts", both)
		if r.code != exitChecksFailed || !strings.Contains(r.stdout, "Unhealthy !") || !strings.Contains(r.stdout, "missing !") ||
			!strings.Contains(r.stdout, "shop/late, exported by a, is not imported in b") {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	t.Logf("transcript: isthmusctl status --contexts %s\n%s", both, r.stdout)

	// b's record says an older agent: version warns of the skew.
	hub, err := brokerclient.NewForConfig(cs.Broker.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hub.BrokerV1alpha1().Clusters(brokerv1.DefaultBrokerNamespace).Patch(ctx, "b", types.MergePatchType,
		[]byte(`{"spec":{"versions":{"agent":"v0.0.1-old"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	r = mustCtl("version", "--context", "member1")
	if !strings.Contains(r.stdout, "agent b") || !strings.Contains(r.stdout, "warning: cluster b runs agent v0.0.1-old") ||
		!strings.Contains(r.stdout, "runs 2 agent versions") || strings.Contains(r.stdout, "cluster a runs") {
		t.Errorf("version with b behind: %s", r)
	}
	r = mustCtl("version", "--broker-context", "broker", "-o", "json")
	var vr versionReport
	if err := json.Unmarshal([]byte(r.stdout), &vr); err != nil || len(vr.Agents) != 2 || vr.Client.Version == "" || len(vr.Warnings) != 2 {
		t.Errorf("version --broker-context -o json: %v %+v", err, vr)
	}

	gatherWithoutSecrets(t, ctx, cs, ctl, metrics["a"])
}

// resolverService is the chart's isthmus-dns Service with a pod behind it
// on the KWOK node, so diagnose has a resolver pod to port-forward to.
func resolverService(t *testing.T, ctx context.Context, m *cluster.Cluster) {
	t.Helper()
	ns := brokerv1.MemberNamespace
	labels := map[string]string{"app.kubernetes.io/name": "isthmus", "app.kubernetes.io/component": "dns"}
	if _, err := m.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-dns", Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-dns-0", Labels: labels},
		Spec: corev1.PodSpec{NodeName: cluster.NodeName, Containers: []corev1.Container{{Name: "dns", Image: "isthmus",
			Ports: []corev1.ContainerPort{{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9470}}}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the resolver's pod ready behind its Service", func() error {
		list, err := m.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=isthmus-dns"})
		if err != nil {
			return err
		}
		if pod, _ := readyPodPort(list.Items); pod != "isthmus-dns-0" {
			return fmt.Errorf("no ready endpoint yet: %+v", list.Items)
		}
		return nil
	})
}

// gatherWithoutSecrets plants the member's broker token and private keys
// where gather reads (an Event, a pod's environment and arguments), runs
// gather over both members and the hub, and checks that the bundle holds
// what it should and none of the credentials: not the tokens, the CA and
// root keys, nor the kubeconfig's client key.
func gatherWithoutSecrets(t *testing.T, ctx context.Context, cs *cluster.Clusterset, ctl func(...string) result, agentMetrics string) {
	t.Helper()
	m := cs.Members[0]
	ns := brokerv1.MemberNamespace
	brokerKC, err := m.Client.CoreV1().Secrets(ns).Get(ctx, setup.BrokerSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := tokenOf(t, brokerKC.Data[setup.BrokerSecretKey])
	caKey := secretData(t, ctx, m, ns, brokerv1.IntermediateCASecret, corev1.TLSPrivateKeyKey)
	rootKey := secretData(t, ctx, cs.Broker, brokerv1.DefaultBrokerNamespace, brokerv1.RootCASecret, corev1.TLSPrivateKeyKey)
	kubeconfig, err := os.ReadFile(cs.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	clientKey := pemBody(t, m.Config.KeyData)
	if _, err := m.Client.CoreV1().Events(ns).Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "leaky", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "isthmus-dns-0"},
		Reason:         "LeakyMessage", Type: corev1.EventTypeWarning,
		Message:       "failed with token " + token + " and key " + string(caKey),
		LastTimestamp: metav1.Now(),
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := m.Client.CoreV1().Pods(ns).Get(ctx, "isthmus-dns-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "BROKER_TOKEN", Value: token}, {Name: "REGION", Value: "eu"}}
	if err := m.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	pod.ObjectMeta = metav1.ObjectMeta{Name: "isthmus-dns-1", Namespace: ns, Labels: pod.Labels}
	pod.Spec.Containers[0].Args = []string{"--broker-token=" + token, "--authorization=Bearer " + token}
	pod.Status = corev1.PodStatus{}
	if _, err := m.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	dir := t.TempDir()
	to := filepath.Join(dir, "bundle.tar.gz")
	r := ctl("gather", "--contexts", "member1,member2", "--broker-context", "broker", "--endpoint", "http://"+agentMetrics, "--to", to)
	if r.code != 0 || !strings.Contains(r.stdout, "wrote "+to) {
		t.Fatalf("gather: %s", r)
	}
	files := untar(t, to)
	for _, want := range []string{"README.txt", "errors.txt", "broker/clusters.yaml", "broker/exportedservices.yaml", "broker/leases.yaml",
		"broker/tunnel-peers.txt", "broker/memberpolicies.yaml", "member1/status.json", "member1/status.txt", "member1/serviceexports.yaml",
		"member2/serviceimports.yaml", "member1/endpointslices.yaml", "member1/events-isthmus-system.txt", "member1/pods.yaml",
		"member1/secrets-isthmus-system.txt", "endpoints/" + safeName(agentMetrics) + "/metrics.txt"} {
		if _, ok := files["bundle/"+want]; !ok {
			t.Errorf("the bundle has no %s", want)
		}
	}
	if got := files["bundle/endpoints/"+safeName(agentMetrics)+"/metrics.txt"]; !strings.Contains(got, "isthmus_agent_") {
		t.Errorf("the agent's metrics are not in the bundle: %.200s", got)
	}
	if got := files["bundle/member1/events-isthmus-system.txt"]; !strings.Contains(got, "LeakyMessage") || !strings.Contains(got, "[REDACTED") {
		t.Errorf("the planted Event is missing or unredacted:\n%s", got)
	}
	if got := files["bundle/member1/secrets-isthmus-system.txt"]; !strings.Contains(got, setup.BrokerSecret) {
		t.Errorf("the Secrets' names are missing:\n%s", got)
	}
	if got := files["bundle/member1/pods.yaml"]; !strings.Contains(got, "REGION") || !strings.Contains(got, "value: eu") {
		t.Errorf("an ordinary environment variable was lost:\n%s", got)
	}
	if got := files["bundle/errors.txt"]; !strings.Contains(got, "logs/isthmus-dns-1") {
		t.Errorf("errors.txt does not say the pod's logs could not be read (KWOK serves none):\n%s", got)
	}
	if !strings.Contains(files["bundle/broker/clusters.yaml"], "v0.0.1-old") {
		t.Errorf("the Cluster records are not in the bundle")
	}
	secrets := map[string]string{"the broker token": token, "the intermediate CA key": pemBody(t, caKey), "the root CA key": pemBody(t, rootKey),
		"the kubeconfig's client key": clientKey}
	if i := strings.Index(string(kubeconfig), "client-key-data: "); i >= 0 {
		secrets["the kubeconfig's client-key-data"] = strings.Fields(string(kubeconfig)[i+len("client-key-data: "):])[0]
	}
	for name, data := range files {
		for what, secret := range secrets {
			if len(secret) < 16 {
				t.Fatalf("%s is too short to look for: %q", what, secret)
			}
			if strings.Contains(data, secret) || strings.Contains(data, secret[:40]) {
				t.Errorf("%s holds %s", name, what)
			}
		}
		if strings.Contains(data, "PRIVATE KEY-----\n") {
			t.Errorf("%s holds a PEM private key", name)
		}
	}
	t.Logf("transcript: isthmusctl gather\n%s%s\nbundle: %v\n--- errors.txt\n%s--- member1/events-isthmus-system.txt\n%s--- broker/tunnel-peers.txt\n%s",
		r.stdout, r.stderr, slices.Sorted(maps.Keys(files)), files["bundle/errors.txt"], files["bundle/member1/events-isthmus-system.txt"], files["bundle/broker/tunnel-peers.txt"])
}

func tokenOf(t *testing.T, kubeconfig []byte) string {
	t.Helper()
	for _, line := range strings.Split(string(kubeconfig), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "token: "); ok {
			return strings.Trim(v, `"`)
		}
	}
	t.Fatalf("no token in the broker kubeconfig")
	return ""
}

func secretData(t *testing.T, ctx context.Context, c *cluster.Cluster, ns, name, key string) []byte {
	t.Helper()
	s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Data[key]) == 0 {
		t.Fatalf("Secret %s/%s has no %s", ns, name, key)
	}
	return s.Data[key]
}

// pemBody is the first base64 line of a PEM block: enough to find the
// key anywhere it was copied.
func pemBody(t *testing.T, pemData []byte) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(pemData)), "\n")
	if len(lines) < 3 {
		t.Fatalf("not PEM: %.40q", pemData)
	}
	return lines[1]
}

func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = string(data)
	}
}
