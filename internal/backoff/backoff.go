// Package backoff is the one exponential backoff of invsync's retry loops: the stream's
// reconnects, the leader's retries, the sink's write and park retries, the snapshot's
// writes, the Bloom rebuild, and the compensation schedule's delays.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay is min(max, initial * 2^n): the wait after n failures.
func Delay(initial, max time.Duration, n int) time.Duration {
	d := initial
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Exponential is a retry loop's delay: Initial after the first failure, doubled after
// each further one up to Max, back to Initial after Reset. Jitter adds up to that
// fraction of the delay at random (so that workers failing together do not retry
// together). The zero value is not useful; use New.
type Exponential struct {
	Initial, Max time.Duration
	Jitter       float64
	failures     int
}

// New returns a backoff from initial to max, without jitter.
func New(initial, max time.Duration) *Exponential {
	return &Exponential{Initial: initial, Max: max}
}

// Current is the delay the next Wait sleeps, without its jitter (for log lines).
func (b *Exponential) Current() time.Duration {
	return Delay(b.Initial, b.Max, b.failures)
}

// Next returns the delay to wait now (with jitter) and doubles the next one.
func (b *Exponential) Next() time.Duration {
	d := b.Current()
	b.failures++
	if b.Jitter > 0 && d > 0 {
		d += time.Duration(rand.Int64N(int64(float64(d)*b.Jitter) + 1))
	}
	return d
}

// Reset starts again from Initial (after a success).
func (b *Exponential) Reset() { b.failures = 0 }

// Wait sleeps Next(), or returns ctx.Err() when ctx ends first.
func (b *Exponential) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
