// Command invsync keeps Redis consistent with inventory tables of a MySQL or MariaDB
// primary. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/snapshot"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const usage = `usage: invsync <command> -c FILE

commands:
  run            follow the binlog and keep Redis in step (the daemon); loads every
                 table first when there is no checkpoint yet
  snapshot       load every table into Redis and record the position to stream from
  check-config   validate the config file, then the source, the tables and Redis
  status         checkpoint, lag, leader, pending and dead compensations, Bloom filters
  compensation list [--json] | replay [--id N ...] | purge --older-than DURATION
                 inspect and act on the writes Redis refused (the compensation table)
  reconcile [--repair] [--report FILE.json] [--table T]...
                 compare every table with Redis and report the drift (missing, stale,
                 mismatch, extra, wrong_type); --repair fixes it. Exit 0 no drift (or
                 all repaired), 1 drift found, 2 error
  get TABLE PK...
                 read rows the way application servers do (package client): Redis,
                 the Bloom filter, the null cache, then MySQL; exit 0 when every row
                 was found, 1 when one was not, 2 on errors. A composite key is given
                 as its parts joined with ':'
`

// quietLogger drops go-redis's own log lines; invsync logs Redis failures itself, with
// context, through zap.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quietLogger{})
	// INVSYNC_CPUPROFILE=FILE writes a CPU profile of the command (for benchmarks).
	if path := os.Getenv("INVSYNC_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				code := run(os.Args[1:], os.Stdout, os.Stderr)
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(code)
			}
		}
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd := args[0]
	sub := ""
	rest := args[1:]
	if cmd == "get" {
		return getCmd(rest, stdout, stderr)
	}
	if cmd == "reconcile" {
		return reconcileCmd(rest, stdout, stderr)
	}
	if cmd == "compensation" {
		if len(rest) == 0 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		sub, rest = rest[0], rest[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "invsync.yaml", "config file")
	asJSON := fs.Bool("json", false, "compensation list: print JSON")
	var ids idList
	fs.Var(&ids, "id", "compensation replay: a row id (repeatable); none means every dead row")
	olderThan := fs.Duration("older-than", 0, "compensation purge: delete dead rows last updated longer ago than this")
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	switch cmd {
	case "run", "check-config", "snapshot", "compensation", "status":
	default:
		fmt.Fprintf(stderr, "invsync: unknown command %q\n%s", cmd, usage)
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	switch cmd {
	case "check-config":
		return checkConfig(cfg, stdout)
	case "status":
		return statusCmd(cfg, *cfgPath, stdout, stderr)
	case "compensation":
		return compensationCmd(cfg, sub, *asJSON, ids, *olderThan, stdout, stderr)
	}
	log, level, err := newLeveledLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cmd == "snapshot" {
		bar := progressBar(stderr)
		pos, err := daemon.Snapshot(ctx, cfg, log, bar)
		if bar != nil {
			fmt.Fprintln(stderr)
		}
		if err != nil {
			log.Error("snapshot failed", zap.Error(err))
			fmt.Fprintf(stderr, "invsync: snapshot: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "snapshot done; streaming will start from %s\n", pos)
		return 0
	}
	log.Info("starting", zap.String("source", cfg.Source.Addr), zap.Strings("redis", cfg.Redis.Addrs), zap.Int("tables", len(cfg.Tables)))
	if err := daemon.New(cfg, log, daemon.WithReload(*cfgPath, level)).Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("fatal", zap.Error(err))
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 1
	}
	return 0
}

func newLogger(c config.Log) (*zap.Logger, error) {
	log, _, err := newLeveledLogger(c)
	return log, err
}

// newLeveledLogger returns the logger and its level, which a config reload changes.
func newLeveledLogger(c config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, err
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	zc.DisableStacktrace = true
	log, err := zc.Build()
	return log, zc.Level, err
}

func checkConfig(cfg *config.Config, out io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fmt.Fprintln(out, "config: OK")
	failed := false
	db, err := daemon.OpenSourceDB(cfg.Source)
	if err != nil {
		fmt.Fprintf(out, "source: FAIL: %v\n", err)
		return 1
	}
	defer db.Close()
	_, problems := daemon.CheckSource(ctx, db, cfg)
	for _, p := range problems {
		if p.Warning {
			fmt.Fprintf(out, "%s: WARN: %v\n", p.Check, p.Err)
		} else {
			failed = true
			fmt.Fprintf(out, "%s: FAIL: %v\n", p.Check, p.Err)
		}
	}
	if !failed {
		fmt.Fprintf(out, "source %s: OK (binlog on, ROW, FULL row image; %d table(s) found with primary keys)\n", cfg.Source.Addr, len(cfg.Tables))
	}
	rdb := daemon.NewRedis(cfg.Redis)
	defer rdb.Close()
	if err := daemon.CheckRedis(ctx, rdb, cfg.Redis); err != nil {
		failed = true
		fmt.Fprintf(out, "redis: FAIL: %v\n", err)
	} else if err := daemon.CheckClaims(ctx, cfg, db, rdb); err != nil {
		failed = true
		fmt.Fprintf(out, "redis: FAIL: %v\n", err)
	} else {
		fmt.Fprintln(out, "redis: OK")
	}
	if failed {
		return 1
	}
	return 0
}

// progressBar draws the snapshot's progress on stderr when it is a terminal (log lines
// report it either way).
func progressBar(w io.Writer) func(snapshot.Progress) {
	f := terminal(w)
	if f == nil {
		return nil
	}
	return func(p snapshot.Progress) {
		const width = 30
		done := 0
		if p.Estimate > 0 {
			done = int(min(width, p.Rows*width/p.Estimate))
		}
		fmt.Fprintf(f, "\r[%s%s] %d rows, %.0f rows/s, ETA %s   ", strings.Repeat("#", done), strings.Repeat(".", width-done),
			p.Rows, p.RowsPerS, p.Remaining.Round(time.Second))
	}
}

type idList []int64

func (l *idList) String() string { return fmt.Sprint(*l) }
func (l *idList) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not a row id: %q", s)
	}
	*l = append(*l, n)
	return nil
}

func compensationCmd(cfg *config.Config, sub string, asJSON bool, ids []int64, olderThan time.Duration, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, closeDB, err := daemon.OpenCompensation(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 1
	}
	defer closeDB()
	switch sub {
	case "list":
		rows, err := st.List(ctx, "")
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 1
		}
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if rows == nil {
				rows = []compensation.Entry{}
			}
			_ = enc.Encode(rows)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tKEY\tTABLE\tVERSION\tATTEMPTS\tNEXT RETRY (UTC)\tLAST ERROR")
		for _, e := range rows {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Status, e.RedisKey, e.Table, e.Version, e.Attempts,
				e.NextRetryAt.Format("2006-01-02 15:04:05"), strings.ReplaceAll(e.LastError, "\n", " "))
		}
		_ = tw.Flush()
		fmt.Fprintf(stdout, "%d row(s)\n", len(rows))
		return 0
	case "replay":
		n, err := st.Replay(ctx, ids)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%d dead row(s) made pending again, due now\n", n)
		return 0
	case "purge":
		if olderThan <= 0 {
			fmt.Fprintln(stderr, "invsync: compensation purge needs --older-than, e.g. --older-than 168h")
			return 2
		}
		n, err := st.Purge(ctx, olderThan)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%d dead row(s) deleted\n", n)
		return 0
	}
	fmt.Fprintf(stderr, "invsync: unknown compensation command %q (list, replay or purge)\n", sub)
	return 2
}

// terminal returns w as a file when it is a terminal (progress bars), else nil.
func terminal(w io.Writer) *os.File {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return f
}
