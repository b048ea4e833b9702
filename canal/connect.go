package canal

import (
	"context"
	"crypto/tls"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/invsync/invsync/config"
)

// Connect opens a text-protocol session to the source (snapshot, reconciliation, row
// fetches), over TLS when source.tls is on.
func Connect(ctx context.Context, s config.Source) (*client.Conn, error) {
	tc, err := s.TLS.Config(config.HostOf(s.Addr))
	if err != nil {
		return nil, err
	}
	var opts []client.Option
	if tc != nil {
		opts = append(opts, func(c *client.Conn) error { c.SetTLSConfig(tc); return nil })
	}
	return client.ConnectWithContext(ctx, s.Addr, s.User, s.Password, "", s.ConnectTimeout, opts...)
}

// tlsConfig is the source's TLS configuration (nil when off).
func tlsConfig(s config.Source) (*tls.Config, error) {
	return s.TLS.Config(config.HostOf(s.Addr))
}
