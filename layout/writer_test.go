package layout_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

type fixture struct {
	t   *testing.T
	rdb *redis.Client
	w   *layout.Writer
	pfx string
}

func newFixture(t *testing.T) *fixture {
	rdb := testenv.Redis(t)
	w := layout.NewWriter(rdb, time.Hour, false)
	if err := w.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, rdb: rdb, w: w, pfx: testenv.Prefix(t, rdb)}
}

func (f *fixture) apply(cs ...layout.Change) []layout.Outcome {
	f.t.Helper()
	out := make([]layout.Outcome, len(cs))
	if err := f.w.Apply(context.Background(), cs, out); err != nil {
		f.t.Fatalf("Apply: %v", err)
	}
	return out
}

func (f *fixture) hash(key string) map[string]string {
	f.t.Helper()
	m, err := f.rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return m
}

func up(key, v string, s layout.Seq, kv ...string) layout.Change {
	c := layout.Change{Key: key, Op: layout.OpUpsert, Version: v, Seq: s}
	for i := 0; i+1 < len(kv); i += 2 {
		c.Fields = append(c.Fields, layout.Field{Name: kv[i], Value: kv[i+1]})
	}
	return c
}

func del(key, v string, s layout.Seq) layout.Change {
	return layout.Change{Key: key, Op: layout.OpDelete, Version: v, Seq: s}
}

func results(out []layout.Outcome) []layout.Result {
	r := make([]layout.Result, len(out))
	for i, o := range out {
		r[i] = o.Result
	}
	return r
}

func TestGuardOrdersBinlogWritesBySeq(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{1}"
	s1, s2, s3 := layout.Seq{File: 1, Pos: 100}, layout.Seq{File: 1, Pos: 200}, layout.Seq{File: 2, Pos: 50}
	f.apply(up(k, "1", s1, "stock", "10", "note", "x"))
	// (b) an UPDATE that changes a column but not the version column still lands, and a
	// column that became NULL disappears.
	f.apply(up(k, "1", s2, "stock", "9"))
	h := f.hash(k)
	if h["stock"] != "9" || h["_v"] != "1" || h["note"] != "" {
		t.Fatalf("after same-version update: %v", h)
	}
	// An older change arriving late is skipped.
	out := f.apply(up(k, "1", s1, "stock", "10"))
	if out[0].Result != layout.Skipped || f.hash(k)["stock"] != "9" {
		t.Fatalf("older write applied: %v %v", out, f.hash(k))
	}
	// (a) DELETE then INSERT with the version starting again from 1.
	f.apply(del(k, "1", s3))
	if h := f.hash(k); h["_deleted"] != "1" {
		t.Fatalf("tombstone: %v", h)
	}
	if ttl := f.rdb.PTTL(context.Background(), k).Val(); ttl <= 0 || ttl > time.Hour {
		t.Fatalf("tombstone TTL %v", ttl)
	}
	s4 := layout.Seq{File: 2, Pos: 90}
	f.apply(up(k, "1", s4, "stock", "5"))
	if h := f.hash(k); h["stock"] != "5" || h["_deleted"] != "" {
		t.Fatalf("reinsert: %v", h)
	}
	if ttl := f.rdb.PTTL(context.Background(), k).Val(); ttl != -1 {
		t.Fatalf("reinserted row must not expire, PTTL %v", ttl)
	}
	// (c) replaying the whole history, twice, changes nothing.
	want := f.hash(k)
	for range 2 {
		out := f.apply(up(k, "1", s1, "stock", "10"), up(k, "1", s2, "stock", "9"), del(k, "1", s3), up(k, "1", s4, "stock", "5"))
		for _, r := range results(out) {
			if r != layout.Skipped {
				t.Fatalf("replay applied something: %v", results(out))
			}
		}
	}
	if got := f.hash(k); !equal(got, want) {
		t.Fatalf("replay changed %v to %v", want, got)
	}
}

func TestGuardRowIndexWithinEvent(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{2}"
	// One UPDATE event can delete and re-create the same key (a primary key shift);
	// the row index orders them.
	out := f.apply(del(k, "3", layout.Seq{File: 5, Pos: 10, Index: 0}))
	out = append(out, f.apply(up(k, "4", layout.Seq{File: 5, Pos: 10, Index: 1}, "stock", "1"))...)
	if h := f.hash(k); h["stock"] != "1" || out[1].Result != layout.Applied {
		t.Fatalf("row index order: %v %v", h, results(out))
	}
}

func TestNonBinlogWritesNeverOverwriteWhatTheyCannotProveOlder(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{3}"
	f.apply(up(k, "5", layout.Seq{File: 1, Pos: 10}, "stock", "50"))
	// A fill that read version 4 (older) or 5 (same) must not overwrite.
	out := f.apply(up(k, "4", layout.Seq{}, "stock", "40"), up(k, "5", layout.Seq{}, "stock", "55"))
	if r := results(out); r[0] != layout.Skipped || r[1] != layout.Skipped || f.hash(k)["stock"] != "50" {
		t.Fatalf("non-binlog overwrite: %v %v", r, f.hash(k))
	}
	// A strictly newer one may.
	f.apply(up(k, "6", layout.Seq{}, "stock", "60"))
	if h := f.hash(k); h["stock"] != "60" || h["_s"] != "" {
		t.Fatalf("newer fill: %v", h)
	}
	// A binlog write of version 6 or later lands on top of it; an older one does not.
	out = f.apply(up(k, "5", layout.Seq{File: 1, Pos: 5}, "stock", "51"))
	if out[0].Result != layout.Skipped {
		t.Fatalf("older binlog write over fill applied")
	}
	f.apply(up(k, "6", layout.Seq{File: 1, Pos: 20}, "stock", "61"))
	if f.hash(k)["stock"] != "61" {
		t.Fatalf("binlog write over fill skipped: %v", f.hash(k))
	}
	// Tombstones protect against late fills of the deleted row.
	f.apply(del(k, "6", layout.Seq{File: 1, Pos: 30}))
	out = f.apply(up(k, "6", layout.Seq{}, "stock", "61"))
	if out[0].Result != layout.Skipped {
		t.Fatal("fill resurrected a deleted row")
	}
	// Over a null marker, any write lands.
	k2 := f.pfx + "{4}"
	f.rdb.HSet(context.Background(), k2, "_null", "1")
	f.apply(up(k2, "1", layout.Seq{File: 1, Pos: 40}, "stock", "1"))
	if h := f.hash(k2); h["_null"] != "" || h["stock"] != "1" {
		t.Fatalf("insert over null marker: %v", h)
	}
}

func TestBigUnsignedVersionsCompareExactly(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{5}"
	f.apply(up(k, "18446744073709551614", layout.Seq{}, "a", "1"))
	out := f.apply(up(k, "18446744073709551615", layout.Seq{}, "a", "2"), up(k, "9007199254740993", layout.Seq{}, "a", "3"))
	if r := results(out); r[0] != layout.Applied || r[1] != layout.Skipped || f.hash(k)["a"] != "2" {
		t.Fatalf("%v %v", r, f.hash(k))
	}
}

func TestWrongTypeFailsOnlyThatKey(t *testing.T) {
	f := newFixture(t)
	bad, good := f.pfx+"{6}", f.pfx+"{7}"
	f.rdb.Set(context.Background(), bad, "not a hash", 0)
	out := f.apply(up(bad, "1", layout.Seq{File: 1, Pos: 1}, "a", "1"), up(good, "1", layout.Seq{File: 1, Pos: 1}, "a", "1"))
	if out[0].Result != layout.Failed || !errors.Is(out[0].Err, layout.ErrKey) {
		t.Fatalf("bad key outcome %+v", out[0])
	}
	if out[1].Result != layout.Applied || f.hash(good)["a"] != "1" {
		t.Fatalf("good key outcome %+v", out[1])
	}
}

func TestRecoversFromNoScript(t *testing.T) {
	f := newFixture(t)
	if err := f.rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	out := f.apply(up(f.pfx+"{8}", "1", layout.Seq{File: 1, Pos: 1}, "a", "1"))
	if out[0].Result != layout.Applied {
		t.Fatalf("after SCRIPT FLUSH: %+v", out[0])
	}
}

func TestUnreachableRedisFailsTheWholeCall(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	w := layout.NewWriter(rdb, time.Hour, false)
	out := make([]layout.Outcome, 1)
	err := w.Apply(context.Background(), []layout.Change{up("x{1}", "1", layout.Seq{File: 1, Pos: 1})}, out)
	if err == nil || out[0].Result != layout.Failed {
		t.Fatalf("err %v outcome %+v", err, out[0])
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A coalesced binlog change carries the greatest version of the changes it stands for:
// DELETE (version 2) then INSERT (version 1 again), merged into one write, must replace
// a snapshot row read before the DELETE (version 2), as the two applied one by one would.
func TestMaxVersionBridgesARestartOverASnapshotRow(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{9}"
	f.apply(up(k, "2", layout.Seq{}, "stock", "5")) // the snapshot read version 2
	merged := up(k, "1", layout.Seq{File: 3, Pos: 30}, "stock", "7")
	out := f.apply(merged)
	if out[0].Result != layout.Skipped {
		t.Fatalf("without MaxVersion an older-looking version must not replace the snapshot row")
	}
	merged.MaxVersion = "2"
	out = f.apply(merged)
	if h := f.hash(k); out[0].Result != layout.Applied || h["stock"] != "7" || h["_v"] != "1" {
		t.Fatalf("with MaxVersion 2: %v %v", out[0], h)
	}
}

// A row found absent (by a re-snapshot) becomes a tombstone without _s; a later binlog
// insert, whatever its version, replaces it.
func TestNonBinlogTombstoneYieldsToTheBinlog(t *testing.T) {
	f := newFixture(t)
	k := f.pfx + "{10}"
	f.apply(up(k, "7", layout.Seq{File: 1, Pos: 10}, "stock", "1"))
	// A sweep that saw version 6 must not delete the newer version 7.
	if out := f.apply(del(k, "6", layout.Seq{})); out[0].Result != layout.Skipped {
		t.Fatal("a stale sweep deleted a newer row")
	}
	if out := f.apply(del(k, "7", layout.Seq{})); out[0].Result != layout.Applied || f.hash(k)["_deleted"] != "1" {
		t.Fatalf("sweep: %v", f.hash(k))
	}
	if out := f.apply(up(k, "1", layout.Seq{File: 2, Pos: 5}, "stock", "9")); out[0].Result != layout.Applied || f.hash(k)["stock"] != "9" {
		t.Fatalf("binlog insert over a swept row: %v", f.hash(k))
	}
}

// A null marker is written only where no key exists, expires, and any row replaces it.
func TestNullMarkers(t *testing.T) {
	f := newFixture(t)
	f.w = layout.NewWriterWithNullTTL(f.rdb, time.Hour, 30*time.Second, false)
	absent, row, tomb := f.pfx+"{n1}", f.pfx+"{n2}", f.pfx+"{n3}"
	f.apply(up(row, "1", layout.Seq{File: 1, Pos: 1}, "stock", "1"), del(tomb, "1", layout.Seq{File: 1, Pos: 2}))
	null := func(k string) layout.Change { return layout.Change{Key: k, Op: layout.OpNull} }
	out := f.apply(null(absent), null(row), null(tomb))
	if r := results(out); r[0] != layout.Applied || r[1] != layout.Skipped || r[2] != layout.Skipped {
		t.Fatalf("null markers: %v", r)
	}
	if h := f.hash(absent); h["_null"] != "1" || len(h) != 1 {
		t.Fatalf("marker: %v", h)
	}
	if ttl := f.rdb.PTTL(context.Background(), absent).Val(); ttl <= 0 || ttl > 30*time.Second {
		t.Fatalf("marker TTL %v", ttl)
	}
	if f.hash(row)["stock"] != "1" || f.hash(tomb)["_deleted"] != "1" {
		t.Fatal("a marker overwrote a row or a tombstone")
	}
	// An insert, from the binlog or a fill, replaces the marker.
	f.apply(up(absent, "1", layout.Seq{}, "stock", "3"))
	if h := f.hash(absent); h["stock"] != "3" || h["_null"] != "" {
		t.Fatalf("fill over a marker: %v", h)
	}
	if ttl := f.rdb.PTTL(context.Background(), absent).Val(); ttl != -1 {
		t.Fatalf("the row must not expire with the marker's TTL: %v", ttl)
	}
}

// A repair writes only over the state it observed: absent, a hash with the observed _s
// and _v, or a value of another type; anything newer makes it a no-op.
func TestRepairIsCompareAndSet(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	key := layout.Key(prefix, []string{"1"})
	at := layout.Seq{File: 3, Pos: 100}
	row := layout.Change{Key: key, Op: layout.OpUpsert, Version: "5", Fields: []layout.Field{{Name: "stock", Value: "7"}}}
	ok, err := w.Repair(ctx, []layout.Repair{{Observed: layout.Observed{Type: "none"}, Change: row, At: at}})
	testenv.Must(t, err, "repair")
	h := rdb.HGetAll(ctx, key).Val()
	if !ok[0] || h["stock"] != "7" || h["_v"] != "5" || h["_s"] != string(layout.AppendSeq(nil, at)) {
		t.Fatalf("absent key not repaired: %v %v", ok, h)
	}
	// Observed state no longer there: refused.
	stale := layout.Observed{Type: "hash", Seq: "", Version: "4"}
	row.Fields[0].Value = "8"
	ok, _ = w.Repair(ctx, []layout.Repair{{Observed: stale, Change: row, At: at}})
	if ok[0] || rdb.HGet(ctx, key, "stock").Val() != "7" {
		t.Fatal("repair over a changed key")
	}
	// The observed state: written; a later binlog change still wins, an earlier one not.
	seen := layout.Observed{Type: "hash", Seq: h["_s"], Version: "5"}
	ok, _ = w.Repair(ctx, []layout.Repair{{Observed: seen, Change: row, At: at}})
	if !ok[0] || rdb.HGet(ctx, key, "stock").Val() != "8" {
		t.Fatal("repair over the observed state refused")
	}
	out := make([]layout.Outcome, 1)
	early := layout.Change{Key: key, Op: layout.OpUpsert, Version: "9", Seq: layout.Seq{File: 3, Pos: 99}, Fields: []layout.Field{{Name: "stock", Value: "1"}}}
	testenv.Must(t, w.Apply(ctx, []layout.Change{early}, out), "apply")
	if out[0].Result != layout.Skipped {
		t.Fatal("a binlog change from before the repair's position replaced it")
	}
	late := early
	late.Seq = layout.Seq{File: 3, Pos: 101}
	testenv.Must(t, w.Apply(ctx, []layout.Change{late}, out), "apply")
	if out[0].Result != layout.Applied {
		t.Fatal("a binlog change after the repair's position did not replace it")
	}
	// A value of another type: removed and replaced; a tombstone repair.
	rdb.Del(ctx, key)
	rdb.Set(ctx, key, "junk", 0)
	ok, _ = w.Repair(ctx, []layout.Repair{{Observed: layout.Observed{Type: "other"}, Change: layout.Change{Key: key, Op: layout.OpDelete, Version: "5"}, At: at}})
	if !ok[0] || rdb.HGet(ctx, key, "_deleted").Val() != "1" || rdb.PTTL(ctx, key).Val() <= 0 {
		t.Fatalf("wrong-type key not repaired into a tombstone: %v", rdb.HGetAll(ctx, key).Val())
	}
}

// A fill (IfAbsent) lands only where no key or a null marker is: never over a row or a
// tombstone, whatever their versions.
func TestIfAbsentFill(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	key := layout.Key(prefix, []string{"1"})
	fill := layout.Change{Key: key, Op: layout.OpUpsert, Version: "11", IfAbsent: true, Fields: []layout.Field{{Name: "stock", Value: "5"}}}
	out := make([]layout.Outcome, 1)
	// Over a tombstone with a lower version (a later incarnation whose version restarted).
	rdb.HSet(ctx, key, "_v", "3", "_s", "000000000100000000040000000", "_deleted", "1")
	testenv.Must(t, w.Apply(ctx, []layout.Change{fill}, out), "apply")
	if out[0].Result != layout.Skipped || rdb.HGet(ctx, key, "_deleted").Val() != "1" {
		t.Fatal("a fill replaced a tombstone")
	}
	rdb.Del(ctx, key)
	rdb.HSet(ctx, key, "_null", "1")
	testenv.Must(t, w.Apply(ctx, []layout.Change{fill}, out), "apply")
	if out[0].Result != layout.Applied || rdb.HGet(ctx, key, "stock").Val() != "5" {
		t.Fatal("a fill did not replace a null marker")
	}
	testenv.Must(t, w.Apply(ctx, []layout.Change{fill}, out), "apply")
	if out[0].Result != layout.Skipped {
		t.Fatal("a fill replaced a row")
	}
}

// replyError is a Redis error reply, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestServerStatesAreOutagesNotKeyErrors(t *testing.T) {
	for msg, want := range map[string]bool{
		"OOM command not allowed when used memory > 'maxmemory'. script: abc, on @user_script:60.": true,
		"MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist":  true,
		"BUSY Redis is busy running a script.":                                                     true,
		"LOADING Redis is loading the dataset in memory":                                           true,
		"READONLY You can't write against a read only replica.":                                    true,
		"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.":         true,
		"CLUSTERDOWN The cluster is down":                                                          true,
		"TRYAGAIN Multiple keys request during rehashing of slot":                                  true,
		"NOREPLICAS Not enough good replicas to write.":                                            true,
		"NOAUTH Authentication required.":                                                          true,
		"NOPERM this user has no permissions to run the 'evalsha' command":                         true,
		"WRONGTYPE Operation against a key holding the wrong kind of value":                        false,
		"BUSYKEY Target key name already exists.":                                                  false,
		"ERR max number of clients reached":                                                        true,
		"BUSY":                                                                                     true,
		"ERR Error running script (call to f_x): @user_script:12: bad argument":                    false,
	} {
		if got := layout.IsServerState(replyError(msg)); got != want {
			t.Errorf("IsServerState(%q) = %v, want %v", msg, got, want)
		}
	}
	if !layout.IsWrongType(replyError("WRONGTYPE Operation against a key holding the wrong kind of value")) || layout.IsWrongType(replyError("ERR wrong number of arguments")) {
		t.Error("IsWrongType")
	}
	if layout.IsServerState(errors.New("dial tcp: connection refused")) {
		t.Error("a transport error is not a server state (it is an outage of its own kind)")
	}
}

// A replacing write (a reload while the stream is paused, after a lost or replaced
// binlog) lands whatever Redis holds, keeps its stamp as _s, and a later binlog write
// orders after it; a replacing delete tombstones a row of a higher version.
func TestReplacingWritesLandAndKeepTheirStamp(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	key := layout.Key(prefix, []string{"1"})
	out := make([]layout.Outcome, 1)
	stamp := layout.Seq{File: 10_000_001, Pos: 500, Index: 9_999_999} // epoch 1, file 1
	later := layout.Seq{File: 10_000_001, Pos: 900}
	for _, before := range [][]any{
		{"_v", "9", "_s", "000000000500000000400000000", "stock", "1"},                 // a binlog row of an earlier epoch
		{"_v", "9", "stock", "1"},                                                      // a snapshot row of a higher version
		{"_v", "9", "_s", "000000000500000000400000000", "_deleted", "1"},              // an earlier epoch's tombstone
		{"_v", "9", "_s", "000000000500000000400000000", "stock", "1", "dropped", "x"}, // a field the row lacks now
	} {
		rdb.Del(ctx, key)
		rdb.HSet(ctx, key, before...)
		c := layout.Change{Key: key, Op: layout.OpUpsert, Version: "1", Replace: true, Seq: stamp, Fields: []layout.Field{{Name: "stock", Value: "777"}}}
		testenv.Must(t, w.Apply(ctx, []layout.Change{c}, out), "apply")
		got := rdb.HGetAll(ctx, key).Val()
		if out[0].Result != layout.Applied || len(got) != 3 || got["stock"] != "777" || got["_v"] != "1" || got["_s"] != string(layout.AppendSeq(nil, stamp)) {
			t.Fatalf("over %v: replacing write gave %v (%v)", before, got, out[0])
		}
		// A binlog write after the stamp applies; one before it (a replay) does not.
		old := layout.Change{Key: key, Op: layout.OpUpsert, Version: "2", Seq: layout.Seq{File: 10_000_001, Pos: 100}, Fields: []layout.Field{{Name: "stock", Value: "5"}}}
		testenv.Must(t, w.Apply(ctx, []layout.Change{old}, out), "apply")
		if out[0].Result != layout.Skipped {
			t.Fatalf("a replayed change before the stamp applied over the replacing write")
		}
		next := layout.Change{Key: key, Op: layout.OpUpsert, Version: "1", Seq: later, Fields: []layout.Field{{Name: "stock", Value: "6"}}}
		testenv.Must(t, w.Apply(ctx, []layout.Change{next}, out), "apply")
		if out[0].Result != layout.Applied || rdb.HGet(ctx, key, "stock").Val() != "6" {
			t.Fatalf("a binlog change after the stamp did not apply")
		}
	}
	rdb.Del(ctx, key)
	rdb.HSet(ctx, key, "_v", "9", "stock", "1")
	del := layout.Change{Key: key, Op: layout.OpDelete, Version: "9", Replace: true, Seq: stamp}
	testenv.Must(t, w.Apply(ctx, []layout.Change{del}, out), "apply")
	if got := rdb.HGetAll(ctx, key).Val(); got["_deleted"] != "1" || got["_s"] != string(layout.AppendSeq(nil, stamp)) {
		t.Fatalf("replacing delete gave %v", got)
	}
}

// A fenced writer (its instance's leader lease expired) sends nothing: Apply and Repair
// fail with ErrFenced and the key is untouched; lifting the fence writes again.
func TestFencedWriterWritesNothing(t *testing.T) {
	f := newFixture(t)
	key := f.pfx + "{1}"
	expired := errors.New("lease expired")
	f.w.SetFence(func() error { return expired })
	out := make([]layout.Outcome, 1)
	err := f.w.Apply(context.Background(), []layout.Change{{Key: key, Op: layout.OpUpsert, Version: "1", Fields: []layout.Field{{Name: "stock", Value: "5"}}}}, out)
	if !errors.Is(err, layout.ErrFenced) || !errors.Is(err, expired) || out[0].Result != layout.Failed {
		t.Fatalf("fenced Apply: err %v, outcome %+v", err, out[0])
	}
	if _, err := f.w.Repair(context.Background(), []layout.Repair{{Change: layout.Change{Key: key, Op: layout.OpUpsert, Version: "1", Fields: []layout.Field{{Name: "stock", Value: "5"}}}}}); !errors.Is(err, layout.ErrFenced) {
		t.Fatalf("fenced Repair: %v", err)
	}
	if n := f.rdb.Exists(context.Background(), key).Val(); n != 0 {
		t.Fatal("a fenced writer wrote the key")
	}
	f.w.SetFence(nil)
	if o := f.apply(layout.Change{Key: key, Op: layout.OpUpsert, Version: "1", Fields: []layout.Field{{Name: "stock", Value: "5"}}}); o[0].Result != layout.Applied {
		t.Fatalf("after the fence was lifted: %+v", o[0])
	}
}
