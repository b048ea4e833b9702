// Package compensation keeps the Redis writes that failed for a single key in a table of
// the state schema, one pending row per Redis key, and decides when each is retried:
// next_retry_at = now + min(max_backoff, initial_backoff * 2^attempts), with jitter; after
// max_attempts the row is dead (kept, listed, replayable).
//
// The sink parks a write here after a short in-place retry when Redis refuses it for its
// key (WRONGTYPE, a script error, OOM for that key), and the write counts as done for the
// checkpoint; the Retrier re-reads the row from the source and writes it through the
// versioned script when it is due. An outage of Redis as a whole is not parked: the sink
// pauses instead.
package compensation

import (
	"math/rand/v2"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
)

// Schedule computes retry times. Jitter is drawn from Rand, so tests can fix it.
type Schedule struct {
	Initial, Max time.Duration
	MaxAttempts  int
	// Rand returns a float in [0, 1); nil means math/rand/v2.
	Rand func() float64
}

// NewSchedule returns the schedule of the compensation config section.
func NewSchedule(c config.Compensation) Schedule {
	return Schedule{Initial: c.InitialBackoff, Max: c.MaxBackoff, MaxAttempts: c.MaxAttempts}
}

// Backoff is the wait before the retry that follows attempts failed attempts:
// min(Max, Initial * 2^attempts), then up to 20% less at random so that keys that failed
// together do not retry together.
func (s Schedule) Backoff(attempts int) time.Duration {
	d := backoff.Delay(s.Initial, s.Max, attempts)
	r := rand.Float64
	if s.Rand != nil {
		r = s.Rand
	}
	return d - time.Duration(float64(d)*0.2*r())
}

// Next returns when to retry after attempts failed attempts, or dead when there are no
// attempts left.
func (s Schedule) Next(now time.Time, attempts int) (at time.Time, dead bool) {
	if attempts >= s.MaxAttempts {
		return time.Time{}, true
	}
	return now.Add(s.Backoff(attempts)), false
}
