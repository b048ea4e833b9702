package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/sink"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// checkpointer writes the checkpoint of one stream session: every checkpoint.interval
// (run) and once at its end (save with final), the watermark's position, after every
// master's applied marker (see rollback.go).
type checkpointer struct {
	d     *Daemon
	wm    *sink.Watermark
	hist  *redisHistory
	store *checkpoint.Store
	// wentBack ends the stream when a marker write finds Redis went back.
	wentBack func(*errRedisWentBack)

	saved        source.Position // the last checkpoint written
	unsavedRows  int64           // rows done since
	lastWrite    time.Time
	fencedLogged bool // once per lapse of the lease
}

// run saves every checkpoint.interval until stop is closed.
func (c *checkpointer) run(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(c.d.cfg.Checkpoint.Interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.save(ctx, false)
		case <-stop:
			return
		}
	}
}

// save writes the watermark's position: the applied markers first, then the checkpoint.
func (c *checkpointer) save(ctx context.Context, final bool) {
	d := c.d
	pos, n, rows := c.wm.Advance()
	if n > 0 {
		d.m.CommittedTxns.Add(float64(n))
	}
	c.unsavedRows += rows
	// A checkpoint write is itself a transaction in the binlog (when the state schema
	// lives on the source). Progress made only of transactions without mirrored rows
	// is saved at most every idleCheckpointInterval, so that the daemon does not feed
	// itself one transaction per interval forever.
	if pos == c.saved || (c.unsavedRows == 0 && !final && time.Since(c.lastWrite) < idleCheckpointInterval) {
		d.lastSave.Store(time.Now().UnixNano())
		return
	}
	// Redis records how far it got first (see rollback.go); a Redis that went back
	// gets no checkpoint past what it holds.
	if err := c.hist.advance(ctx, pos); err != nil {
		var back *errRedisWentBack
		if errors.As(err, &back) {
			c.wentBack(back)
			return
		}
		if errors.Is(err, layout.ErrFenced) {
			if !c.fencedLogged {
				c.fencedLogged = true
				d.log.Warn("applied marker not written: the leader lease expired; the checkpoint waits until the lock is confirmed or lost", append(pos.Fields(), zap.Error(err))...)
			}
			return
		}
		d.log.Warn("applied marker not written; the checkpoint waits", append(pos.Fields(), zap.Error(err))...)
		return
	}
	c.fencedLogged = false
	if err := c.store.Save(ctx, pos); err != nil {
		d.log.Warn("checkpoint not written; will retry", append(pos.Fields(), zap.Error(err))...)
		return
	}
	c.saved, c.unsavedRows, c.lastWrite = pos, 0, time.Now()
	d.lastSave.Store(time.Now().UnixNano())
	d.m.CheckpointWrites.Inc()
	d.log.Debug("checkpoint", pos.Fields()...)
}
