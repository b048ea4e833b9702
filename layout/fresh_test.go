package layout_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// monitor returns the commands that Redis ran on keys under f.pfx while do ran, as
// MONITOR prints them (commands run by scripts included), lower-cased.
func (f *fixture) monitor(do func()) []string {
	f.t.Helper()
	conn, err := net.DialTimeout("tcp", testenv.RedisAddr(), 3*time.Second)
	testenv.Must(f.t, err, "connect for MONITOR")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	rd := bufio.NewReader(conn)
	_, err = conn.Write([]byte("MONITOR\r\n"))
	testenv.Must(f.t, err, "MONITOR")
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		f.t.Fatalf("MONITOR: %q %v", line, err)
	}
	do()
	// The end marker: MONITOR shows this ECHO once everything before it has run.
	end := f.pfx + "end-of-monitor"
	testenv.Must(f.t, f.rdb.Echo(context.Background(), end).Err(), "ECHO")
	var cmds []string
	for {
		line, err := rd.ReadString('\n')
		testenv.Must(f.t, err, "read MONITOR")
		if strings.Contains(line, end) {
			return cmds
		}
		if strings.Contains(line, f.pfx) {
			// +1700000000.123456 [0 lua] "HMGET" "key" ...
			if _, cmd, ok := strings.Cut(line, "] \""); ok {
				name, _, _ := strings.Cut(cmd, "\"")
				cmds = append(cmds, strings.ToLower(name))
			}
		}
	}
}

func count(cmds []string, name string) int {
	n := 0
	for _, c := range cmds {
		if c == name {
			n++
		}
	}
	return n
}

// A call whose row keys are all new (a snapshot, a bulk import of new SKUs, a catch-up
// over new keys) does not read them one by one: a single EXISTS tells that none exists.
// A call over existing keys still reads each one (the guard).
func TestNewKeysAreNotReadOneByOne(t *testing.T) {
	f := newFixture(t)
	const n = 20
	var inserts, updates []layout.Change
	for i := range n {
		k := fmt.Sprintf("%s{%d}", f.pfx, i)
		inserts = append(inserts, up(k, "1", layout.Seq{File: 1, Pos: uint32(10 + i)}, "stock", "5"))
		updates = append(updates, up(k, "2", layout.Seq{File: 1, Pos: uint32(100 + i)}, "stock", "4"))
	}
	cmds := f.monitor(func() { f.apply(inserts...) })
	if got := count(cmds, "hmget"); got != 0 {
		t.Errorf("%d HMGETs for %d new keys, want none: %v", got, n, cmds)
	}
	if got := count(cmds, "exists"); got != 1 {
		t.Errorf("%d EXISTS for one call of new keys, want 1: %v", got, cmds)
	}
	if got := count(cmds, "hset"); got != n {
		t.Errorf("%d HSETs for %d new keys: %v", got, n, cmds)
	}
	cmds = f.monitor(func() { f.apply(updates...) })
	if got := count(cmds, "hmget"); got != n {
		t.Errorf("%d HMGETs for %d updates, want one each (the guard): %v", got, n, cmds)
	}
	for i := range n {
		if h := f.hash(updates[i].Key); h["stock"] != "4" || h["_v"] != "2" {
			t.Fatalf("key %d: %v", i, h)
		}
	}
}

// A key that one call writes twice or more is new only to its first change: each later
// change is guarded against what the earlier ones wrote, whatever its op.
func TestAKeyWrittenTwiceInOneCallIsGuardedAgainstItself(t *testing.T) {
	f := newFixture(t)
	k := func(s string) string { return f.pfx + "{" + s + "}" }
	s := func(pos uint32) layout.Seq { return layout.Seq{File: 3, Pos: pos} }
	null := layout.Change{Key: k("c"), Op: layout.OpNull}
	fill := layout.Change{Key: k("d"), Op: layout.OpUpsert, Version: "9", IfAbsent: true,
		Fields: []layout.Field{{Name: "stock", Value: "99"}}}
	out := f.apply(
		up(k("a"), "2", s(20), "stock", "2"),
		up(k("a"), "1", s(10), "stock", "1"), // older: skipped
		up(k("b"), "1", s(10), "stock", "1"),
		del(k("b"), "1", s(30)),              // newer: a tombstone
		up(k("b"), "1", s(20), "stock", "7"), // older than the delete: skipped
		up(k("c"), "1", s(10), "stock", "3"),
		null, // the row exists now: no marker
		up(k("d"), "1", s(10), "stock", "4"),
		fill, // a row exists now: no fill
	)
	want := []layout.Result{layout.Applied, layout.Skipped, layout.Applied, layout.Applied, layout.Skipped,
		layout.Applied, layout.Skipped, layout.Applied, layout.Skipped}
	if got := results(out); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	if h := f.hash(k("a")); h["stock"] != "2" || h["_v"] != "2" {
		t.Errorf("a: %v", h)
	}
	if h := f.hash(k("b")); h["_deleted"] != "1" || h["stock"] != "" {
		t.Errorf("b: %v", h)
	}
	if h := f.hash(k("c")); h["stock"] != "3" || h["_null"] != "" {
		t.Errorf("c: %v", h)
	}
	if h := f.hash(k("d")); h["stock"] != "4" {
		t.Errorf("d: %v", h)
	}
	// A call that mixes new keys with an existing one reads as before and writes all.
	out = f.apply(up(k("a"), "3", s(40), "stock", "3"), up(k("e"), "1", s(40), "stock", "5"))
	if got := results(out); got[0] != layout.Applied || got[1] != layout.Applied {
		t.Fatalf("mixed call: %v", got)
	}
	if f.hash(k("a"))["stock"] != "3" || f.hash(k("e"))["stock"] != "5" {
		t.Fatalf("mixed call: %v %v", f.hash(k("a")), f.hash(k("e")))
	}
}
