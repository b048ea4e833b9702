package e2e

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// proc is the daemon binary run as a separate process.
type proc struct {
	cmd  *exec.Cmd
	http string
	log  string
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testenv.Must(t, err, "listen")
	defer ln.Close()
	return ln.Addr().String()
}

// spawnProc starts `invsync run` without waiting.
func spawnProc(t testing.TB, cfgPath, httpAddr string) *proc {
	t.Helper()
	cmd := exec.Command(binary, "run", "-c", cfgPath)
	cmd.Env = append(os.Environ(), "INVSYNC_SOURCE_PASSWORD="+testenv.AppPassword())
	logf, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	testenv.Must(t, err, "log file")
	cmd.Stdout, cmd.Stderr = logf, logf
	testenv.Must(t, cmd.Start(), "start daemon")
	p := &proc{cmd: cmd, http: httpAddr, log: logf.Name()}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

// startProc starts `invsync run` and waits until it is ready.
func startProc(t testing.TB, cfgPath, httpAddr string) *proc {
	t.Helper()
	p := spawnProc(t, cfgPath, httpAddr)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code, err := httpGet("http://" + httpAddr + "/readyz"); err == nil && code == 200 {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(p.log)
	t.Fatalf("daemon not ready within 30s; log:\n%s", out)
	return nil
}

func (p *proc) kill(t testing.TB) {
	t.Helper()
	testenv.Must(t, p.cmd.Process.Signal(syscall.SIGKILL), "kill -9")
	_ = p.cmd.Wait()
}

func (p *proc) terminate(t testing.TB) {
	t.Helper()
	testenv.Must(t, p.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("daemon exited with %v after SIGTERM, want 0", err)
	}
}

// sample is a checkpoint read at some moment and the _s of every key read just after.
type sample struct {
	pos  source.Position
	seqs map[string]string
}

func less(a, b source.Position) bool {
	fa, _ := strconv.Atoi(a.File[len(a.File)-6:])
	fb, _ := strconv.Atoi(b.File[len(b.File)-6:])
	if fa != fb {
		return fa < fb
	}
	return a.Pos < b.Pos
}

// Acceptance 2: the workload while the daemon is killed with SIGKILL three times at
// random moments and restarted: the same end state, and every checkpoint seen at any
// time covers only changes that Redis held at that time.
func TestKill9LosesNothing(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr)
	store := e.checkpointStore()
	startPos, ok, err := store.Load(context.Background())
	if err != nil || !ok {
		t.Fatalf("no checkpoint after start: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	smp := startSampler(ctx, store, e.rdb, e.cfg.Tables[0].KeyPrefix, 100*time.Millisecond)

	wl := &workload{db: e.db, table: "inventory", skus: 2000, writers: 4, txns: 4000, maxRows: 20}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(ctx) }()
	for kill := 0; kill < 3; kill++ {
		// A random moment within the workload.
		target := int64(400 + rand.IntN(1000) + kill*1000)
		for wl.done.Load() < target {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		p.kill(t)
		t.Logf("killed with SIGKILL after %d transactions", wl.done.Load())
		p = startProc(t, cfgPath, httpAddr)
	}
	if err := <-wdone; err != nil {
		t.Fatalf("workload: %v", err)
	}
	e.waitEqual(60 * time.Second)
	p.terminate(t)
	samples := smp.stop()
	endPos, _, err := store.Load(context.Background())
	testenv.Must(t, err, "final checkpoint")
	checkSamples(t, e, startPos, endPos, samples, 10)
}

// sampler reads the checkpoint and then every key's _s, repeatedly, until stopped.
type sampler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []sample
}

func startSampler(ctx context.Context, store *checkpoint.Store, rdb redis.UniversalClient, prefix string, every time.Duration) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			pos, ok, err := store.Load(ctx)
			if err != nil || !ok {
				continue
			}
			seqs, err := readSeqs(ctx, rdb, prefix)
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.samples = append(s.samples, sample{pos: pos, seqs: seqs})
			s.mu.Unlock()
			time.Sleep(every)
		}
	}()
	return s
}

func (s *sampler) stop() []sample {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// A catch-up after downtime takes the catch-up path (keys wait and coalesce while the
// reader is busy); killed with SIGKILL in the middle of it and restarted, it still ends
// equal, and no checkpoint written during it passes a change that Redis did not hold.
func TestKill9DuringCatchUp(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr)
	p.terminate(t)
	store := e.checkpointStore()
	startPos, ok, err := store.Load(context.Background())
	if err != nil || !ok {
		t.Fatalf("no checkpoint after the first start: %v", err)
	}
	// Downtime: a workload with many changes per key, then a pause so that every commit
	// is old (the daemon is behind) when it starts again.
	wl := &workload{db: e.db, table: "inventory", skus: 3000, writers: 4, txns: 8000, maxRows: 20}
	testenv.Must(t, wl.run(context.Background()), "workload")
	written := e.currentPosition()
	time.Sleep(2500 * time.Millisecond)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	smp := startSampler(ctx, store, e.rdb, e.cfg.Tables[0].KeyPrefix, 5*time.Millisecond)
	p = startProc(t, cfgPath, httpAddr)
	// Kill it as soon as the catch-up writes.
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, err := httpBody("http://" + httpAddr + "/metrics")
		if err == nil && metricSum(body, "invsync_rows_applied_total") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the catch-up wrote nothing")
		}
		time.Sleep(2 * time.Millisecond)
	}
	p.kill(t)
	// The kill hit work in flight: Redis still differs from MySQL and the checkpoint is
	// short of the end of the workload.
	if e.compare() == nil {
		t.Fatal("Redis already equals MySQL at the kill: the kill landed after the catch-up")
	}
	if pos, _, err := store.Load(context.Background()); err != nil || !less(pos, source.Position{File: written.File, Pos: written.Pos}) {
		t.Fatalf("the checkpoint %s is not short of the workload's end %s at the kill (%v)", pos, written, err)
	}
	p = startProc(t, cfgPath, httpAddr)
	e.waitEqual(60 * time.Second)
	// Redis may be equal before the restarted daemon has re-read what the killed one
	// wrote; wait until its checkpoint covers the whole workload.
	for deadline := time.Now().Add(60 * time.Second); ; {
		pos, _, err := store.Load(context.Background())
		testenv.Must(t, err, "checkpoint")
		if !less(pos, source.Position{File: written.File, Pos: written.Pos}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint %s did not reach the end of the workload %s", pos, written)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let the sampler see the final checkpoint too
	// The catch-up path was at work: changes of waiting keys were merged.
	if body, err := httpBody("http://" + httpAddr + "/metrics"); err != nil || metricSum(body, "invsync_rows_coalesced_total") == 0 {
		t.Errorf("the catch-up coalesced nothing (%v): the catch-up path was not exercised", err)
	}
	p.terminate(t)
	samples := smp.stop()
	endPos, _, err := store.Load(context.Background())
	testenv.Must(t, err, "final checkpoint")
	checkSamples(t, e, startPos, endPos, samples, 3)
}

func readSeqs(ctx context.Context, rdb redis.UniversalClient, prefix string) (map[string]string, error) {
	keys, err := testenv.ScanKeys(ctx, rdb, prefix)
	if err != nil {
		return nil, err
	}
	pipe := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, k, layout.FieldSeq)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[string]string, len(keys))
	for i, k := range keys {
		out[k] = cmds[i].Val()
	}
	return out, nil
}

// recorder replays the binlog between two positions and checks the samples taken at
// each commit position against the newest change of every key up to it.
type recorder struct {
	t       *testing.T
	last    map[string]layout.Seq
	samples []sample
	next    int
	end     source.Position
	checked int
}

var errReachedEnd = errors.New("reached the end position")

func (r *recorder) Row(_ context.Context, row canal.Row) error {
	r.last[row.Change.Key] = row.Change.Seq
	return nil
}

func (r *recorder) Commit(_ context.Context, c canal.Commit) error {
	for r.next < len(r.samples) && !less(c.Pos, r.samples[r.next].pos) {
		s := r.samples[r.next]
		if s.pos.File == c.Pos.File && s.pos.Pos == c.Pos.Pos {
			for key, seq := range r.last {
				want := string(layout.AppendSeq(nil, seq))
				if got := s.seqs[key]; got < want {
					r.t.Errorf("checkpoint %s was written while %s held _s %q, older than its change %s at or before it", s.pos, key, got, want)
				}
			}
			r.checked++
		}
		r.next++
	}
	if !less(c.Pos, r.end) {
		return errReachedEnd
	}
	return nil
}

func (r *recorder) Heartbeat(context.Context) error { return nil }

func (r *recorder) TableChanged(context.Context, *source.Table, source.Position, bool) error {
	return nil
}

func (r *recorder) Reload(context.Context, *source.Table, source.Position, string) error { return nil }

func checkSamples(t *testing.T, e *env, start, end source.Position, samples []sample, atLeast int) {
	t.Helper()
	sort.SliceStable(samples, func(i, j int) bool { return less(samples[i].pos, samples[j].pos) })
	tables := e.tables()
	src, err := canal.NewSource(config.Source{Addr: e.cfg.Source.Addr, User: testenv.AdminUser(), Password: testenv.AdminPassword(),
		Flavor: "mariadb", ServerID: testenv.ServerID(), TimeZone: "UTC", HeartbeatPeriod: time.Second, ReadTimeout: 10 * time.Second}, tables, zap.NewNop())
	testenv.Must(t, err, "source")
	rec := &recorder{t: t, last: map[string]layout.Seq{}, samples: samples, end: end}
	// Skip the samples at the start position: nothing precedes it.
	for rec.next < len(samples) && !less(start, samples[rec.next].pos) {
		rec.next++
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	err = src.Run(ctx, source.Position{File: start.File, Pos: start.Pos}, rec)
	if !errors.Is(err, errReachedEnd) {
		t.Fatalf("replaying the binlog for the check: %v", err)
	}
	if rec.checked < atLeast {
		seen := map[string]bool{}
		var distinct []string
		for _, s := range samples {
			if k := s.pos.String(); !seen[k] {
				seen[k] = true
				distinct = append(distinct, k)
			}
		}
		t.Fatalf("only %d of %d checkpoint samples were checked (range %s .. %s; sampled positions %v)", rec.checked, len(samples), start, end, distinct)
	}
	t.Logf("checked %d checkpoint samples against %d keys", rec.checked, len(rec.last))
}
