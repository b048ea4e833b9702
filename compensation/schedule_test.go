package compensation

import (
	"testing"
	"time"
)

func TestBackoffDoublesUpToTheCap(t *testing.T) {
	s := Schedule{Initial: 500 * time.Millisecond, Max: 5 * time.Minute, MaxAttempts: 20, Rand: func() float64 { return 0 }}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i, w := range want {
		if got := s.Backoff(i); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", i, got, w)
		}
	}
	if got := s.Backoff(19); got != 5*time.Minute {
		t.Errorf("Backoff(19) = %s, want the 5m cap", got)
	}
	if got := s.Backoff(1000); got != 5*time.Minute {
		t.Errorf("Backoff(1000) = %s, want the cap (no overflow)", got)
	}
}

func TestJitterStaysWithinTwentyPercentBelow(t *testing.T) {
	s := Schedule{Initial: time.Second, Max: time.Hour, MaxAttempts: 5, Rand: func() float64 { return 0.999 }}
	if got := s.Backoff(2); got > 4*time.Second || got < 3200*time.Millisecond {
		t.Fatalf("Backoff(2) with jitter = %s, want within [3.2s, 4s]", got)
	}
}

func TestNextOnAnInjectedClock(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	s := Schedule{Initial: time.Second, Max: time.Minute, MaxAttempts: 3, Rand: func() float64 { return 0 }}
	at, dead := s.Next(now, 0)
	if dead || !at.Equal(now.Add(time.Second)) {
		t.Fatalf("Next(0) = %v, %v", at, dead)
	}
	at, dead = s.Next(now, 2)
	if dead || !at.Equal(now.Add(4*time.Second)) {
		t.Fatalf("Next(2) = %v, %v", at, dead)
	}
	if _, dead := s.Next(now, 3); !dead {
		t.Fatal("after max_attempts the row must be dead")
	}
}
