package reconcile

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/invsync/invsync/layout"
	"go.uber.org/zap"
)

// waitApplied waits for a daemon that moves its markers until they reach the re-read,
// and stops waiting for one whose markers stand still (no daemon writes), for the rest
// of the run.
func TestWaitApplied(t *testing.T) {
	at := layout.Seq{File: 3, Pos: 500, Index: 9_999_999}
	runner := func(applied func() (layout.Seq, error)) *runner {
		return &runner{d: Deps{Log: zap.NewNop(), AppliedEvery: 10 * time.Millisecond,
			Applied: func(context.Context) (layout.Seq, error) { return applied() }}, opts: Options{Recheck: 100 * time.Millisecond}}
	}

	// A lagging daemon: its markers move, and reach at after 300 ms (longer than the
	// re-check window): waited for.
	start := time.Now()
	r := runner(func() (layout.Seq, error) {
		if time.Since(start) > 300*time.Millisecond {
			return at, nil
		}
		return layout.Seq{File: 3, Pos: uint32(time.Since(start).Milliseconds()), Index: 9_999_999}, nil
	})
	if err := r.waitApplied(context.Background(), at); err != nil || time.Since(start) < 300*time.Millisecond || r.noDaemon {
		t.Fatalf("lagging daemon: err %v after %s, noDaemon %v", err, time.Since(start), r.noDaemon)
	}

	// Markers that stand still: given up after the re-check window, and not waited for
	// again in this run.
	calls := 0
	r = runner(func() (layout.Seq, error) { calls++; return layout.Seq{File: 3, Pos: 100, Index: 9_999_999}, nil })
	start = time.Now()
	if err := r.waitApplied(context.Background(), at); err != nil || !r.noDaemon || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("still markers: err %v after %s, noDaemon %v", err, time.Since(start), r.noDaemon)
	}
	before := calls
	if err := r.waitApplied(context.Background(), at); err != nil || calls != before {
		t.Fatalf("waited again: err %v, %d more reads", err, calls-before)
	}

	// No markers (a load running), or the markers unreadable: no wait.
	r = runner(func() (layout.Seq, error) { return layout.Seq{}, nil })
	start = time.Now()
	if err := r.waitApplied(context.Background(), at); err != nil || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("no markers: err %v after %s", err, time.Since(start))
	}
	r = runner(func() (layout.Seq, error) { return layout.Seq{}, errors.New("connection refused") })
	if err := r.waitApplied(context.Background(), at); err != nil || !r.noDaemon {
		t.Fatalf("unreadable markers: err %v, noDaemon %v", err, r.noDaemon)
	}

	// A run waits a minute in all, then judges by the window alone.
	r = runner(func() (layout.Seq, error) {
		return layout.Seq{File: 3, Pos: uint32(time.Now().UnixNano() % 400), Index: 9_999_999}, nil
	})
	r.lagWaited = lagWaitLimit - 200*time.Millisecond
	start = time.Now()
	if err := r.waitApplied(context.Background(), at); err != nil || time.Since(start) > 2*time.Second || r.noDaemon {
		t.Fatalf("budget: err %v after %s, noDaemon %v", err, time.Since(start), r.noDaemon)
	}
}
