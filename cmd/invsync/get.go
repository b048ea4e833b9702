package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"sync"
	"syscall"

	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"go.uber.org/zap"
)

// getCmd is `invsync get TABLE PK...`.
func getCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("get", "invsync get [-c FILE] TABLE PK...", `
Read rows the way application servers do (package client): Redis, the Bloom filter, the
null cache, then MySQL. A composite key is given as its parts joined with ':' (a ':' or
'\' inside a part escaped with '\'). A key that starts with '-' is taken as a key, not a
flag (or put it after --).`, `  0  every row was found
  1  a row was not found
  2  an error, bad arguments or an invalid config file`, stdout, stderr)
	pos, err := f.parseArgs(args)
	if err != nil {
		return parseCode(err)
	}
	if len(pos) < 2 {
		_ = f.fail("a table and at least one key are needed")
		return 2
	}
	cfg, ok := f.loadConfig(stderr)
	if !ok {
		return 2
	}
	cfgPath := f.cfgPath
	table, keys := pos[0], pos[1:]
	var nParts int
	for _, t := range cfg.Tables {
		if t.TableName() == table || t.Table == table {
			nParts = -1 // known; the number of parts is checked by the loader
		}
	}
	if nParts == 0 {
		fmt.Fprintf(stderr, "invsync: table %q is not in %s (fix: name one of its tables, as schema.table)\n", table, *cfgPath)
		return 2
	}
	return withClient(cfg, stderr, func(ctx context.Context, cl *client.Client) int {
		code := 0
		for _, k := range keys {
			// A composite key's parts joined with ':', a ':' or '\' inside a part escaped
			// with '\' (the Redis key's encoding).
			parts, err := layout.SplitInner(k, -1)
			if err != nil {
				fmt.Fprintf(stderr, "invsync: get %s %s: %v\n", table, k, err)
				return 2
			}
			res, err := cl.Get(ctx, table, parts...)
			if err != nil {
				fmt.Fprintf(stderr, "invsync: get %s %s: %v\n", table, k, err)
				return 2
			}
			if !res.Found {
				code = max(code, 1)
				what := string(res.Source)
				if res.Deleted {
					what = "tombstone: deleted"
				}
				fmt.Fprintf(stdout, "%s %s: not found (%s)\n", table, k, what)
				continue
			}
			fmt.Fprintf(stdout, "%s %s (%s): %s\n", table, k, res.Source, rowJSON(res.Row))
		}
		return code
	})
}

// rowJSON renders a row's columns and its version as one JSON object (keys sorted).
func rowJSON(r client.Row) string {
	m := make(map[string]string, len(r.Fields)+1)
	for k, v := range r.Fields {
		m[k] = v
	}
	m["_v"] = r.Version
	b, _ := json.Marshal(m)
	return string(b)
}

// withClient runs f with the read path of cfg (openClient) and a context that ends on
// SIGINT or SIGTERM; it returns f's exit status, 2 when the client cannot be opened.
func withClient(cfg *config.Config, stderr io.Writer, f func(ctx context.Context, cl *client.Client) int) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, closeAll, err := openClient(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	defer closeAll()
	return f(ctx, cl)
}

// openClient returns the read path of package client over the configured Redis, with a
// loader that reads rows from the source as the snapshot does. Call the returned
// function when done.
func openClient(ctx context.Context, cfg *config.Config) (*client.Client, func(), error) {
	c, err := daemon.Open(cfg)
	if err != nil {
		return nil, nil, err
	}
	tables, err := c.Tables(ctx)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	// Versions derived from positions belong to the checkpoint's epoch.
	epoch := c.Epoch(ctx)
	f := snapshot.NewFetcher(c.Source, tables, func() uint32 { return epoch }, zap.NewNop())
	var mu sync.Mutex
	load := func(ctx context.Context, table string, pk []string) (*client.Row, error) {
		mu.Lock()
		defer mu.Unlock()
		ch, found, err := f.Fetch(ctx, table, layout.KeyInner(pk))
		if err != nil || !found {
			return nil, err
		}
		row := &client.Row{Fields: make(map[string]string, len(ch.Fields)), Version: ch.Version}
		for _, fl := range ch.Fields {
			row.Fields[fl.Name] = fl.Value
		}
		return row, nil
	}
	cl, err := client.New(c.Redis, c.ClientTables(tables...), load, client.Options{NullTTL: cfg.Bloom.NullTTL})
	if err != nil {
		f.Close()
		c.Close()
		return nil, nil, err
	}
	return cl, func() {
		mu.Lock()
		f.Close()
		mu.Unlock()
		c.Close()
	}, nil
}
