package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// newProxy starts a toxiproxy TCP proxy to upstream on a free loopback port; Stop cuts
// every connection and refuses new ones until Start.
func newProxy(t *testing.T, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(server, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

// blackHole makes p drop every byte both ways while keeping every connection open on
// both sides, as a partition or a host that lost power does: a side that closes its end
// is not seen closing by the other (its close is held for an hour). heal removes it.
func blackHole(t *testing.T, p *toxiproxy.Proxy) (heal func()) {
	t.Helper()
	var names []string
	for _, stream := range []string{"upstream", "downstream"} {
		for _, tx := range []string{
			`{"name":"drop-%[1]s","type":"timeout","stream":"%[1]s","toxicity":1,"attributes":{"timeout":0}}`,
			`{"name":"hold-%[1]s","type":"slow_close","stream":"%[1]s","toxicity":1,"attributes":{"delay":3600000}}`,
		} {
			w, err := p.Toxics.AddToxicJson(strings.NewReader(fmt.Sprintf(tx, stream)))
			if err != nil {
				t.Fatalf("black hole %s: %v", p.Name, err)
			}
			names = append(names, w.Name)
		}
	}
	return func() {
		for _, n := range names {
			_ = p.Toxics.RemoveToxic(context.Background(), n)
		}
	}
}
