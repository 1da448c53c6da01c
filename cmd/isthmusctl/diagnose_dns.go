package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// dnsTimeout bounds each DNS exchange; the resolver answers from memory.
const dnsTimeout = 3 * time.Second

// dns asks this cluster's resolver for the service's name, directly at
// --dns-server or through a port-forward to the resolver's Service.
func (d *diagnosis) dns(ctx context.Context) {
	fqdn := d.name + "." + d.ns + ".svc.clusterset.local"
	server, tcpOnly, via := d.dnsServer, false, ""
	if server == "" {
		if d.dnsService == "" {
			d.add("dns", true, "skipped: pass --dns-server host:port or --dns-service ns/name to ask this cluster's resolver for "+fqdn, "")
			return
		}
		addr, stop, where, err := d.forwardToResolver(ctx)
		switch {
		case err != nil && apierrors.IsNotFound(err):
			d.add("dns", true, "skipped: no Service "+d.dnsService+" in "+d.id+" and no --dns-server given", "")
			return
		case err != nil:
			d.add("dns", false, "port-forward to the resolver: "+err.Error(), "is the resolver's pod running (kubectl -n "+namespaceOf(d.dnsService)+" get pods)? else pass --dns-server host:port of a resolver you can reach")
			return
		}
		defer stop()
		// A port-forward carries TCP only.
		server, tcpOnly, via = addr, true, " (port-forward to "+where+")"
	}
	qtype := dns.TypeA
	if strings.Contains(d.ip, ":") {
		qtype = dns.TypeAAAA
	}
	answers, transport, err := dnsQuery(ctx, server, fqdn, qtype, tcpOnly)
	switch {
	case err != nil:
		d.add("dns", false, "asking "+server+via+": "+err.Error(), "is `isthmus dns` running and is "+server+" its address?")
	case d.ip != "" && !slices.Contains(answers, d.ip):
		d.add("dns", false, fmt.Sprintf("%s%s answered %v over %s, want the ClusterSetIP %s", server, via, answers, transport, d.ip), "the resolver lags or serves another cluster: check its /readyz and isthmus_dns_sync_age_seconds")
	default:
		d.add("dns", len(answers) > 0, fmt.Sprintf("%s -> %s (%s%s)", fqdn, strings.Join(answers, " "), transport, via), "the resolver has no answer: check its /readyz")
	}
}

// dnsQuery asks server for name's records of qtype with miekg/dns's
// client: over UDP, then over TCP when the answer is truncated or UDP
// fails; over TCP only when tcpOnly. It returns the addresses answered
// and the transport that answered.
func dnsQuery(ctx context.Context, server, name string, qtype uint16, tcpOnly bool) ([]string, string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = false
	var udpErr error
	if !tcpOnly {
		c := &dns.Client{Net: "udp", Timeout: dnsTimeout}
		r, _, err := c.ExchangeContext(ctx, m, server)
		if err == nil && !r.Truncated {
			return addresses(r)
		}
		udpErr = err
		if err == nil {
			udpErr = errors.New("truncated")
		}
	}
	c := &dns.Client{Net: "tcp", Timeout: dnsTimeout}
	r, _, err := c.ExchangeContext(ctx, m, server)
	transport := "TCP"
	if udpErr != nil {
		transport = "TCP after UDP: " + udpErr.Error()
	}
	if err != nil {
		if udpErr != nil {
			return nil, "", fmt.Errorf("over UDP: %v; over TCP: %w", udpErr, err)
		}
		return nil, "", fmt.Errorf("over TCP: %w", err)
	}
	answers, _, err := addresses(r)
	return answers, transport, err
}

func addresses(r *dns.Msg) ([]string, string, error) {
	if r.Rcode != dns.RcodeSuccess {
		return nil, "", fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		switch a := rr.(type) {
		case *dns.A:
			out = append(out, a.A.String())
		case *dns.AAAA:
			out = append(out, a.AAAA.String())
		}
	}
	return out, "UDP", nil
}

// forwardToResolver opens a port-forward to a ready pod behind the
// resolver's Service, on its TCP DNS port, and returns the local address.
func (d *diagnosis) forwardToResolver(ctx context.Context) (addr string, stop func(), where string, err error) {
	ns, name := namespaceOf(d.dnsService), nameOf(d.dnsService)
	if _, err := d.local.Kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
		return "", nil, "", err
	}
	list, err := d.local.Kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{discoveryv1.LabelServiceName: name}.String()})
	if err != nil {
		return "", nil, "", err
	}
	pod, port := readyPodPort(list.Items)
	if pod == "" {
		return "", nil, "", fmt.Errorf("the Service %s has no ready pod with a TCP port", d.dnsService)
	}
	where = fmt.Sprintf("pod %s/%s:%d", ns, pod, port)
	if addr, stop, err = portForward(ctx, d.local.Config, ns, pod, port); err != nil {
		return "", nil, where, fmt.Errorf("%s: %w", where, err)
	}
	return addr, stop, where, nil
}

// readyPodPort picks a ready pod endpoint and the slice's TCP port,
// preferring one named dns-tcp.
func readyPodPort(list []discoveryv1.EndpointSlice) (string, int) {
	for _, s := range list {
		port := 0
		for _, p := range s.Ports {
			if p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) && (port == 0 || p.Name != nil && *p.Name == "dns-tcp") {
				port = int(*p.Port)
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if (e.Conditions.Ready == nil || *e.Conditions.Ready) && e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				return e.TargetRef.Name, port
			}
		}
	}
	return "", 0
}

// portForward forwards a local port on 127.0.0.1 to a pod's port through
// the apiserver, as kubectl port-forward does, until stop is called.
func portForward(ctx context.Context, cfg *rest.Config, ns, pod string, port int) (string, func(), error) {
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return "", nil, err
	}
	u, err := portForwardURL(cfg, ns, pod)
	if err != nil {
		return "", nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stopCh, readyCh := make(chan struct{}), make(chan struct{})
	var errOut bytes.Buffer
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stopCh, readyCh, io.Discard, &errOut)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	stop := func() { close(stopCh); <-done }
	select {
	case <-readyCh:
	case err := <-done:
		return "", nil, fmt.Errorf("%v %s", err, strings.TrimSpace(errOut.String()))
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		stop()
		return "", nil, fmt.Errorf("port-forward: no local port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))), stop, nil
}

func portForwardURL(cfg *rest.Config, ns, pod string) (*url.URL, error) {
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, err
	}
	return base.JoinPath("api", "v1", "namespaces", ns, "pods", pod, "portforward"), nil
}

func namespaceOf(nsName string) string {
	ns, _, _ := strings.Cut(nsName, "/")
	return ns
}

func nameOf(nsName string) string {
	_, name, _ := strings.Cut(nsName, "/")
	return name
}
