package daemon

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	// Go profiles, on the same (loopback by default) listener.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/bloom/rebuild", d.rebuildHandler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if sk := d.sk.Load(); d.ready.Load() && sk != nil {
			if cause := sk.Paused(); cause != "" {
				http.Error(w, "not ready: writing waits for Redis: "+cause, http.StatusServiceUnavailable)
				return
			}
		}
		if d.ready.Load() {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		http.Error(w, "not ready: the binlog stream is not running", http.StatusServiceUnavailable)
	})
	return mux
}
