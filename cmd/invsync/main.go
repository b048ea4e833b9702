// Command invsync keeps Redis consistent with inventory tables of a MySQL or MariaDB
// primary. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
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

// command is one of invsync's commands: its name, a line for the overview, and what
// runs it with the arguments after its name.
type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"run", "follow the binlog and keep Redis in step (the daemon)", runCmd},
	{"snapshot", "load every table into Redis and record the position to stream from", snapshotCmd},
	{"check-config", "validate the config file, then the source, the tables and Redis", checkConfigCmd},
	{"status", "checkpoint, lag, leader, pending and dead compensations, Bloom filters", statusCmd},
	{"compensation", "list | replay | purge the writes Redis refused (the compensation table)", compensationCmd},
	{"reconcile", "compare every table with Redis and report (--repair: fix) the drift", reconcileCmd},
	{"get", "read rows the way application servers do: Redis, Bloom, null cache, MySQL", getCmd},
	{"reserve", "hold units of a row for an order (flash-sale reservations)", reserveCmd},
	{"release", "give an order's hold back", releaseCmd},
	{"holds", "list a row's reservations: available, held, every order recorded", holdsCmd},
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: invsync <command> [flags] [arguments]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\n`invsync <command> --help` (or `invsync help <command>`) gives the command's flags and exit statuses.")
}

// quietLogger drops go-redis's own log lines; invsync logs Redis failures itself, with
// context, through zap.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// defaultGCPercent is the GC target invsync runs at unless GOGC is set: a queue full of
// waiting rows (sink.queue_size per worker) is most of the daemon's heap, and Go's
// default of 100 lets the heap grow to twice it before collecting. At 50 the peak RSS
// of a 500,000-row transaction is 190 MB instead of 270, for about 10% more CPU in a
// catch-up (BenchmarkBigTransaction, BenchmarkW1CatchUp).
const defaultGCPercent = 50

// tuneGC sets the GC target to defaultGCPercent unless the environment (lookup) sets
// GOGC, which the Go runtime has then applied.
func tuneGC(lookup func(string) (string, bool)) {
	if _, ok := lookup("GOGC"); !ok {
		debug.SetGCPercent(defaultGCPercent)
	}
}

func main() {
	redis.SetLogger(quietLogger{})
	tuneGC(os.LookupEnv)
	stop := profile(os.Getenv, os.Args)
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// profile starts the profiles that the environment asks for (for benchmarks) and returns
// the function that writes them: INVSYNC_CPUPROFILE=FILE a CPU profile of the command,
// INVSYNC_MEMPROFILE=FILE its allocations (go tool pprof -sample_index=alloc_space). %c
// in FILE stands for the command's name.
func profile(getenv func(string) string, args []string) (stop func()) {
	file := func(path string) string {
		if len(args) > 1 {
			path = strings.ReplaceAll(path, "%c", args[1])
		}
		return path
	}
	var stops []func()
	if path := getenv("INVSYNC_CPUPROFILE"); path != "" {
		if f, err := os.Create(file(path)); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
			} else {
				f.Close()
			}
		}
	}
	if path := getenv("INVSYNC_MEMPROFILE"); path != "" {
		stops = append(stops, func() {
			if f, err := os.Create(file(path)); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		})
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if len(args) > 1 {
			return run([]string{args[1], "--help"}, stdout, stderr)
		}
		printUsage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "invsync: unknown command %q\n", name)
	printUsage(stderr)
	return 2
}

// runCmd is `invsync run`: the daemon.
func runCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("run", "invsync run [-c FILE]", `
Follow the binlog and keep Redis in step. With no checkpoint yet, load every table
first (a snapshot), then stream from the position recorded before it. SIGHUP or a
change of the file reloads the config; SIGINT or SIGTERM stops after the final
checkpoint.`, `  0  stopped by SIGINT or SIGTERM, the final checkpoint written
  1  a fatal error (named in the log and on stderr)
  2  bad arguments or an invalid config file`, stdout, stderr)
	cfg, code := f.config(args, stderr)
	if cfg == nil {
		return code
	}
	log, level, err := newLeveledLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("starting", zap.String("source", cfg.Source.Addr), zap.Strings("redis", cfg.Redis.Addrs), zap.Int("tables", len(cfg.Tables)))
	if err := daemon.New(cfg, log, daemon.WithReload(*f.cfgPath, level)).Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("fatal", zap.Error(err))
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 1
	}
	return 0
}

// snapshotCmd is `invsync snapshot`.
func snapshotCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("snapshot", "invsync snapshot [-c FILE]", `
Load every table into Redis (replacing what it holds when a checkpoint exists) and
record the position to stream from; `+"`invsync run`"+` then resumes there. Refused while
an instance leads this config.`, `  0  every table loaded, the position recorded
  1  the load failed or another instance leads
  2  bad arguments or an invalid config file`, stdout, stderr)
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
	bar := progressBar(stderr)
	at, err := daemon.New(cfg, log).Snapshot(ctx, bar)
	if bar != nil {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		log.Error("snapshot failed", zap.Error(err))
		fmt.Fprintf(stderr, "invsync: snapshot: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "snapshot done; streaming will start from %s\n", at)
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

// checkConfigCmd is `invsync check-config`.
func checkConfigCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("check-config", "invsync check-config [-c FILE]", `
Validate the config file, then reach the source (binlog on, ROW format, FULL row image,
every table with a primary key), Redis, and the key prefixes' claims.`, `  0  every check passed (warnings may be printed)
  1  a check failed (each is printed with its cause and fix)
  2  bad arguments or an invalid config file`, stdout, stderr)
	cfg, code := f.config(args, stderr)
	if cfg == nil {
		return code
	}
	return checkConfig(cfg, stdout)
}

func checkConfig(cfg *config.Config, out io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fmt.Fprintln(out, "config: OK")
	failed := false
	c, err := daemon.Open(cfg)
	if err != nil {
		fmt.Fprintf(out, "source: FAIL: %v\n", err)
		return 1
	}
	defer c.Close()
	_, problems := c.CheckSource(ctx)
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
	if err := c.CheckRedis(ctx); err != nil {
		failed = true
		fmt.Fprintf(out, "redis: FAIL: %v\n", err)
	} else if err := c.CheckClaims(ctx); err != nil {
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

// compensationCmd is `invsync compensation list|replay|purge`.
func compensationCmd(args []string, stdout, stderr io.Writer) int {
	const subs = `  list    [--json]                   every row of the compensation table
  replay  [--id N ...]               make dead rows pending again, due now (none: every dead row)
  purge   --older-than DURATION      delete dead rows last updated longer ago than this`
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w, code := stderr, 2
		if len(args) > 0 {
			w, code = stdout, 0
		}
		fmt.Fprintf(w, "usage: invsync compensation <list|replay|purge> [-c FILE] [flags]\n\n%s\n\n`invsync compensation <sub> --help` gives its flags.\n", subs)
		return code
	}
	sub := args[0]
	exits := `  0  done
  1  the state database could not be read or written
  2  bad arguments or an invalid config file`
	var f *cmdFlags
	var asJSON *bool
	var ids idList
	var olderThan *time.Duration
	switch sub {
	case "list":
		f = newFlags("compensation list", "invsync compensation list [-c FILE] [--json]", "List every row of the compensation table: the writes Redis refused, their attempts and next retry.", exits, stdout, stderr)
		asJSON = f.Bool("json", false, "print JSON")
	case "replay":
		f = newFlags("compensation replay", "invsync compensation replay [-c FILE] [--id N ...]", "Make dead rows pending again, due now, for the daemon's retrier.", exits, stdout, stderr)
		f.Var(&ids, "id", "a row id (repeatable); none means every dead row")
	case "purge":
		f = newFlags("compensation purge", "invsync compensation purge [-c FILE] --older-than DURATION", "Delete dead rows last updated longer ago than --older-than.", exits, stdout, stderr)
		olderThan = f.Duration("older-than", 0, "delete dead rows last updated longer ago than this (e.g. 168h)")
	default:
		fmt.Fprintf(stderr, "invsync: unknown compensation command %q (list, replay or purge)\n", sub)
		return 2
	}
	cfg, code := f.config(args[1:], stderr)
	if cfg == nil {
		return code
	}
	if sub == "purge" && *olderThan <= 0 {
		fmt.Fprintln(stderr, "invsync: compensation purge needs --older-than, e.g. --older-than 168h")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := daemon.Open(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 1
	}
	defer c.Close()
	st, err := c.Compensation(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return 1
	}
	switch sub {
	case "list":
		return compensationList(ctx, st, *asJSON, stdout, stderr)
	case "replay":
		n, err := st.Replay(ctx, ids)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%d dead row(s) made pending again, due now\n", n)
		return 0
	default:
		n, err := st.Purge(ctx, *olderThan)
		if err != nil {
			fmt.Fprintf(stderr, "invsync: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%d dead row(s) deleted\n", n)
		return 0
	}
}

func compensationList(ctx context.Context, st *compensation.Store, asJSON bool, stdout, stderr io.Writer) int {
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
