package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/layout"
)

// getCmd is `invsync get -c FILE TABLE PK...`.
func getCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "invsync.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Flags may also follow the table and keys.
	var pos []string
	rest := fs.Args()
	for len(rest) > 0 {
		pos = append(pos, rest[0])
		if err := fs.Parse(rest[1:]); err != nil {
			return 2
		}
		rest = fs.Args()
	}
	if len(pos) < 2 {
		fmt.Fprintln(stderr, "usage: invsync get -c FILE TABLE PK...")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, closeAll, err := daemon.OpenClient(ctx, cfg, nil)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	defer closeAll()
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
