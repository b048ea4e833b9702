package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/reconcile"
	"go.uber.org/zap"
)

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// reconcileCmd is `invsync reconcile [--repair] [--report FILE.json] [--table T]...`.
func reconcileCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("reconcile", "invsync reconcile [-c FILE] [--repair] [--report FILE.json] [--table T]...", `
Compare every table with Redis (keyset walk of MySQL, then a scan of the keys under each
prefix) and report the drift: missing, stale, mismatch, extra, wrong_type. Differences
are re-checked before they are reported; --repair fixes them.`, `  0  no drift, or every difference repaired
  1  drift found (and not repaired)
  2  an error, bad arguments or an invalid config file`, stdout, stderr)
	repair := f.Bool("repair", false, "repair the differences found")
	reportPath := f.String("report", "", "write a JSON report to this file")
	samples := f.Int("samples", 100, "keys of each kind listed in the JSON report")
	var tables stringList
	f.Var(&tables, "table", "reconcile only this table (schema.table or its name; repeatable)")
	cfg, code := f.config(args, stderr)
	if cfg == nil {
		return code
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := reconcile.Options{Repair: *repair, Tables: tables, Samples: *samples}
	if bar := reconcileBar(stderr); bar != nil {
		opts.Progress = bar
		defer fmt.Fprintln(stderr)
	}
	rep, note, err := daemon.New(cfg, log).Reconcile(ctx, opts)
	if rep != nil {
		// Also when some tables failed: the others' results stand.
		printReport(stdout, rep, note)
		if *reportPath != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(*reportPath, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintf(stderr, "invsync: write the report: %v\n", werr)
				return 2
			}
		}
	}
	if err != nil {
		log.Error("reconcile failed", zap.Error(err))
		fmt.Fprintf(stderr, "invsync: reconcile: %v\n", err)
		return 2
	}
	if rep.Drift() {
		return 1
	}
	return 0
}

func printReport(w io.Writer, rep *reconcile.Report, note string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "table\trows\t"
	for _, k := range reconcile.Kinds {
		head += string(k) + "\t"
	}
	fmt.Fprintln(tw, head+"repaired\tseconds\t")
	for _, t := range rep.Tables {
		line := t.Table + "\t" + fmt.Sprint(t.RowsChecked) + "\t"
		var repaired int64
		for _, k := range reconcile.Kinds {
			line += fmt.Sprint(t.Differences[k]) + "\t"
			repaired += t.Repaired[k]
		}
		fmt.Fprintln(tw, line+fmt.Sprint(repaired)+"\t"+fmt.Sprintf("%.1f", t.Seconds)+"\t")
	}
	tw.Flush()
	rate := float64(rep.RowsChecked) / max(rep.Seconds, 1e-9)
	switch {
	case rep.Differences == 0:
		fmt.Fprintf(w, "no drift: %d rows compared in %.1fs (%.0f rows/s)\n", rep.RowsChecked, rep.Seconds, rate)
	case !rep.Drift():
		fmt.Fprintf(w, "drift repaired: %d differences in %d rows, all repaired (%.1fs)\n", rep.Differences, rep.RowsChecked, rep.Seconds)
	case rep.Repair:
		fmt.Fprintf(w, "drift: %d differences in %d rows, %d not repaired (the key changed meanwhile; run again) (%.1fs)\n", rep.Differences, rep.RowsChecked, rep.Unrepaired, rep.Seconds)
	default:
		fmt.Fprintf(w, "drift: %d differences in %d rows (%.1fs); run with --repair to fix them\n", rep.Differences, rep.RowsChecked, rep.Seconds)
	}
	if note != "" {
		fmt.Fprintln(w, note)
	}
}

// reconcileBar draws progress on stderr when it is a terminal.
func reconcileBar(w io.Writer) func(reconcile.Progress) {
	f := terminal(w)
	if f == nil {
		return nil
	}
	var last time.Time
	return func(p reconcile.Progress) {
		if time.Since(last) < 100*time.Millisecond {
			return
		}
		last = time.Now()
		const width = 30
		done := 0
		if p.Estimate > 0 {
			done = int(min(width, p.Rows*width/p.Estimate))
		}
		fmt.Fprintf(f, "\r[%s%s] %s: %d rows, %.0f rows/s   ", strings.Repeat("#", done), strings.Repeat(".", width-done), p.Table, p.Rows, p.RowsPerS)
	}
}
