package snapshot

import (
	"context"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// handOffPosition asks position for the snapshot's position; with HandOffAtLeast, again
// until it is at or after the floor (see floorReached).
func (s *Snapshot) handOffPosition(ctx context.Context, conn *client.Conn, position func(context.Context) (source.Position, error)) (source.Position, error) {
	poll := backoff.New(5*time.Millisecond, 200*time.Millisecond)
	var waitingSince time.Time
	for {
		p0, err := position(ctx)
		if err != nil || !s.handOff || s.floor.IsZero() || !SeqOf(p0).Less(s.floor) {
			return p0, err
		}
		if ok, err := s.floorReachable(conn, p0, &waitingSince); err != nil || !ok {
			return p0, err
		}
		if err := poll.Wait(ctx); err != nil {
			return p0, err
		}
	}
}

// floorReachable is asked while a read (at pos) waits for the floor to become visible: after
// floorPatience it checks that the source's binlog reaches the floor at all; when it does
// not (the floor is from a history the source no longer has: a reset binlog), it drops
// the floor and returns false (read on from what the source has now).
func (s *Snapshot) floorReachable(conn *client.Conn, pos source.Position, waitingSince *time.Time) (bool, error) {
	if waitingSince.IsZero() {
		*waitingSince = time.Now()
		return true, nil
	}
	waited := time.Since(*waitingSince)
	if waited <= floorPatience {
		return true, nil
	}
	// A commit on its way can take long (semi-sync waits for a replica up to its
	// timeout), but when even the server's binlog ends before the floor, the floor is
	// from a history the source no longer has.
	end, err := source.MasterStatus(conn)
	if err != nil {
		return false, err
	}
	end.Epoch = s.epoch
	if SeqOf(end).Less(s.floor) {
		s.log.Warn("the source's binlog ends before the position the stream had read (its history was replaced): the reload reads on from the source's current state",
			append(end.Fields(), zap.Duration("waited", waited))...)
		s.floor = layout.Seq{}
		return false, nil
	}
	s.log.Warn("a reload waits for transactions the stream already read to become visible to readers (semi-sync waiting for a replica?)",
		append(pos.Fields(), zap.Duration("waited", waited))...)
	*waitingSince = time.Now()
	return true, nil
}

// floorPatience is how long a chunk waits for its floor (AtLeast) to become visible before
// it checks that the floor is still in the source's binlog (and says that it waits).
const floorPatience = 10 * time.Second

// readAt runs query inside a consistent snapshot at or after the snapshot's floor and
// returns that snapshot's exact position (see source.ReadConsistent).
func (r *run) readAt(ctx context.Context, query string, res **mysql.Result) (source.Position, error) {
	poll := backoff.New(5*time.Millisecond, 200*time.Millisecond)
	var waitingSince time.Time
	for {
		pos, err := source.ReadConsistent(r.conn, r.s.src.Flavor, r.s.epoch, func(err error) {
			r.s.log.Warn("reload chunks may miss a transaction committing as they are read", zap.Error(err))
		},
			func(source.Position) error {
				var err error
				*res, err = r.conn.Execute(query)
				return err
			})
		if err != nil || r.s.floor.IsZero() || !SeqOf(pos).Less(r.s.floor) {
			return pos, err
		}
		// The stream has written a transaction this snapshot does not see yet: it is in
		// the binlog, its commit is still on its way. Read again once it is visible.
		(*res).Close()
		if ok, err := r.s.floorReachable(r.conn, pos, &waitingSince); err != nil {
			return pos, err
		} else if !ok {
			continue // the floor dropped: read on from what the source has now
		}
		if err := poll.Wait(ctx); err != nil {
			return pos, err
		}
	}
}
