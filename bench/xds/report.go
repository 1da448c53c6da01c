package main

import (
	"fmt"
	"io"
	"runtime"
	"time"
)

// report prints a markdown table and the ratios anchor/ours for the
// single-endpoint change, per client count.
func report(w io.Writer, rows []row, services, endpoints, updates int) {
	fmt.Fprintf(w, "%d services × %d endpoints, SotW ADS EDS, clients as separate processes, GOMAXPROCS %d, median of %d single-endpoint changes\n\n", services, endpoints, runtime.GOMAXPROCS(0), updates)
	fmt.Fprintln(w, "| server | clients | initial push (to last client) | initial server CPU | initial bytes | 1-endpoint change: latency | server CPU | bytes to all clients | assignments sent |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %d | %v | %v | %.1f MB | %v | %v | %d B | %d |\n", r.impl, r.clients,
			r.initial.Round(time.Millisecond), r.initialCPU.Round(time.Millisecond), float64(r.initialBytes)/1e6,
			median(r.changeLatency).Round(10*time.Microsecond), median(r.changeCPU).Round(10*time.Microsecond),
			medianInt(r.changeBytes), r.changeResources[len(r.changeResources)/2])
	}
	fmt.Fprintln(w)
	for i := 0; i+1 < len(rows); i += 2 {
		a, o := rows[i], rows[i+1]
		fmt.Fprintf(w, "- %d client(s): one endpoint change is %.0f× cheaper in server CPU, %.0f× fewer bytes, %.1f× lower latency than the snapshot cache\n",
			a.clients, ratio(median(a.changeCPU), median(o.changeCPU)), float64(medianInt(a.changeBytes))/float64(max(medianInt(o.changeBytes), 1)),
			ratio(median(a.changeLatency), median(o.changeLatency)))
	}
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}
