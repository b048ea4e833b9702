package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

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

// serveHTTP serves http.listen (metrics, health, /bloom/rebuild, pprof) until stop is
// called; stop waits for the server to end.
func (d *Daemon) serveHTTP() (stop func(), err error) {
	if d.cfg.HTTP.Listen == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", d.cfg.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w (fix: choose a free port)", d.cfg.HTTP.Listen, err)
	}
	addr := ln.Addr().String()
	d.addr.Store(&addr)
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
	var serving sync.WaitGroup
	serving.Go(func() { _ = srv.Serve(ln) })
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		serving.Wait()
	}, nil
}
