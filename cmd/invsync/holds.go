package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
)

const holdsExits = `  0  done (reserve: held; release: released or already ended)
  1  refused (reserve: sold out, over the per-user limit, no such row; release: no such order)
  2  an error, bad arguments or an invalid config file`

// holdArgs parses a reservation command's TABLE PK, loads the config and opens the
// client; run is called with them.
func holdArgs(f *cmdFlags, args []string, stderr io.Writer, run func(ctx context.Context, cl *client.Client, table string, pk []string) int) int {
	pos, err := f.parseArgs(args)
	if err != nil {
		return parseCode(err)
	}
	if len(pos) != 2 {
		_ = f.fail("a table and one key are needed")
		return 2
	}
	cfg, ok := f.loadConfig(stderr)
	if !ok {
		return 2
	}
	if !hasReservations(cfg, pos[0]) {
		fmt.Fprintf(stderr, "invsync: table %q has no reservations in %s (fix: name a table with tables[].reservations)\n", pos[0], *f.cfgPath)
		return 2
	}
	pk, err := layout.SplitInner(pos[1], -1)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	return withClient(cfg, stderr, func(ctx context.Context, cl *client.Client) int { return run(ctx, cl, pos[0], pk) })
}

func hasReservations(cfg *config.Config, table string) bool {
	for _, t := range cfg.Tables {
		if (t.TableName() == table || t.Table == table) && t.Reservations != nil {
			return true
		}
	}
	return false
}

// reserveCmd is `invsync reserve --order ID [--user U] [--qty N] TABLE PK`.
func reserveCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("reserve", "invsync reserve [-c FILE] --order ID [--user U] [--qty N] TABLE PK", `
Hold units of a row for an order, as package client's Reserve does (for operators and
tests: applications call the library). Idempotent by order id.`, holdsExits, stdout, stderr)
	order := f.String("order", "", "the order id (required)")
	user := f.String("user", "", "the buyer (counted by the per-user limit)")
	qty := f.Int64("qty", 1, "units to hold")
	return holdArgs(f, args, stderr, func(ctx context.Context, cl *client.Client, table string, pk []string) int {
		if *order == "" {
			fmt.Fprintln(stderr, "invsync: --order is required")
			return 2
		}
		r, err := cl.Reserve(ctx, table, pk, *order, *user, *qty)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 2
		}
		fmt.Fprintf(stdout, "%s: available %d", r.Outcome, r.Available)
		if !r.Expires.IsZero() {
			fmt.Fprintf(stdout, ", hold expires %s", r.Expires.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(stdout)
		if r.Outcome != client.Held {
			return 1
		}
		return 0
	})
}

// releaseCmd is `invsync release --order ID TABLE PK`.
func releaseCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("release", "invsync release [-c FILE] --order ID TABLE PK", `
Give an order's hold back (a cancelled or failed order), as package client's Release
does. Idempotent: an order whose hold ended before says how it ended.`, holdsExits, stdout, stderr)
	order := f.String("order", "", "the order id (required)")
	return holdArgs(f, args, stderr, func(ctx context.Context, cl *client.Client, table string, pk []string) int {
		if *order == "" {
			fmt.Fprintln(stderr, "invsync: --order is required")
			return 2
		}
		out, avail, err := cl.Release(ctx, table, pk, *order)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 2
		}
		fmt.Fprintf(stdout, "%s: available %d\n", out, avail)
		if out == client.UnknownOrder {
			return 1
		}
		return 0
	})
}

// holdsCmd is `invsync holds [--json] TABLE PK`.
func holdsCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("holds", "invsync holds [-c FILE] [--json] TABLE PK", `
List the reservations of a row: available and held units, then every order recorded
(held, released, expired, settled) with its units, buyer and expiry.`, `  0  listed
  2  an error, bad arguments or an invalid config file`, stdout, stderr)
	asJSON := f.Bool("json", false, "print JSON")
	return holdArgs(f, args, stderr, func(ctx context.Context, cl *client.Client, table string, pk []string) int {
		avail, held, found, err := cl.Available(ctx, table, pk...)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 2
		}
		hs, err := cl.Holds(ctx, table, pk...)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 2
		}
		sort.Slice(hs, func(i, j int) bool { return hs[i].Order < hs[j].Order })
		if *asJSON {
			b, _ := json.MarshalIndent(map[string]any{"found": found, "available": avail, "held": held, "orders": hs}, "", "  ")
			fmt.Fprintln(stdout, string(b))
			return 0
		}
		if !found {
			fmt.Fprintln(stdout, "row: not in Redis")
		}
		fmt.Fprintf(stdout, "available %d, held %d, %d order(s)\n", avail, held, len(hs))
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ORDER\tSTATE\tQTY\tUSER\tEXPIRES")
		for _, h := range hs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", h.Order, h.State, h.Qty, h.User, h.Expires.UTC().Format(time.RFC3339))
		}
		_ = tw.Flush()
		return 0
	})
}
