package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelayDoublesUpToMax(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for n, w := range want {
		if got := Delay(time.Second, 5*time.Second, n); got != w {
			t.Errorf("Delay(1s, 5s, %d) = %s, want %s", n, got, w)
		}
	}
	if got := Delay(time.Second, time.Minute, 1000); got != time.Minute {
		t.Errorf("many failures: %s, want the max", got)
	}
}

func TestExponentialResetsAndJitters(t *testing.T) {
	b := New(10*time.Millisecond, 40*time.Millisecond)
	var got []time.Duration
	for i := 0; i < 4; i++ {
		got = append(got, b.Next())
	}
	if got[0] != 10*time.Millisecond || got[1] != 20*time.Millisecond || got[2] != 40*time.Millisecond || got[3] != 40*time.Millisecond {
		t.Fatalf("delays %v", got)
	}
	b.Reset()
	if b.Current() != 10*time.Millisecond {
		t.Fatalf("after Reset: %s", b.Current())
	}
	j := &Exponential{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5}
	for i := 0; i < 50; i++ {
		j.Reset()
		if d := j.Next(); d < 100*time.Millisecond || d > 150*time.Millisecond {
			t.Fatalf("jittered delay %s outside [100ms, 150ms]", d)
		}
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(time.Hour, time.Hour).Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait on an ended context: %v", err)
	}
	if err := New(time.Millisecond, time.Millisecond).Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}
