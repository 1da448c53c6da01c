package isthmus

import (
	"context"
	"log/slog"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"

	isthmusdns "github.com/isthmus-dev/isthmus/dnsserver"
)

// Plugin answers the clusterset zone and passes every other name to the
// next plugin.
type Plugin struct {
	Next    plugin.Handler
	handler *isthmusdns.Handler
	source  *isthmusdns.Source
}

// Name implements plugin.Handler.
func (p *Plugin) Name() string { return Name }

// Ready implements the ready plugin's Readiness: true after the first
// full sync.
func (p *Plugin) Ready() bool { return p.source.Ready() == nil }

// ServeDNS implements plugin.Handler. The answer is unpacked into a
// dns.Msg and written with WriteMsg, so that plugins wrapping the writer
// (cache, metrics, log) see it as they see any other.
func (p *Plugin) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if len(r.Question) == 0 || !p.handler.InZones(r.Question[0].Name) {
		return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
	}
	out := p.handler.AppendAnswer(nil, r, w.RemoteAddr())
	if out == nil {
		return dns.RcodeSuccess, nil // nothing to send (a response, not a query)
	}
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		return dns.RcodeServerFailure, plugin.Error(Name, err)
	}
	if err := w.WriteMsg(m); err != nil {
		return dns.RcodeServerFailure, plugin.Error(Name, err)
	}
	// Written: CoreDNS must not write an error reply of its own.
	return dns.RcodeSuccess, nil
}

// slogToCoreDNS sends the resolver's logs to CoreDNS's log.
func slogToCoreDNS() *slog.Logger {
	return slog.New(clogHandler{})
}

type clogHandler struct{ attrs []slog.Attr }

func (h clogHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h clogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return clogHandler{attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}
func (h clogHandler) WithGroup(string) slog.Handler { return h }
func (h clogHandler) Handle(_ context.Context, r slog.Record) error {
	msg := "isthmus: " + r.Message
	add := func(a slog.Attr) bool { msg += " " + a.String(); return true }
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	switch {
	case r.Level >= slog.LevelError:
		clog.Error(msg)
	case r.Level >= slog.LevelWarn:
		clog.Warning(msg)
	default:
		clog.Info(msg)
	}
	return nil
}
