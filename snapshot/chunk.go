package snapshot

import (
	"context"
	"hash/maphash"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

// writeChunks applies each chunk of writes until writes is closed or a write fails.
func (r *run) writeChunks(ctx context.Context, t *source.Table, writes <-chan []layout.Change) error {
	out := make([]layout.Outcome, r.s.opts.ChunkSize)
	for changes := range writes {
		if err := r.write(ctx, changes, out); err != nil {
			return err
		}
		r.report(t.FullName(), false)
	}
	return nil
}

// readChunk runs query; a reload reads it in a snapshot stamped with its position.
func (r *run) readChunk(ctx context.Context, tq *tableQuery, query, positionVersion string) (res *mysql.Result, stamp layout.Seq, _ string, err error) {
	// A reload that runs while the stream writes stamps each chunk with the exact
	// binlog position of the consistent snapshot it is read in: its rows are then
	// ordered against the stream's by position. Versions cannot order them: a row
	// read before a DELETE may carry a higher version than the tombstone of a later
	// incarnation whose version restarted.
	// A replacing reload (the stream is paused) stamps its chunks the same way: a
	// binlog change after the chunk's position then replaces the row, one before it
	// (replayed when the stream resumes) cannot.
	if r.s.noSweep || r.s.replace {
		pos, err := r.readAt(ctx, query, &res)
		if err != nil {
			return res, stamp, positionVersion, err
		}
		stamp = SeqOf(pos)
		if tq.versionAt < 0 {
			positionVersion = strconv.FormatUint(positionVersionOf(pos), 10)
		}
	} else if res, err = r.conn.Execute(query); err != nil {
		return res, stamp, positionVersion, err
	}
	return res, stamp, positionVersion, nil
}

// chunkChanges turns res's rows into changes, and returns them and the last row's values.
func (r *run) chunkChanges(tq *tableQuery, res *mysql.Result, positionVersion string, stamp layout.Seq) ([]layout.Change, [][]byte, error) {
	changes := make([]layout.Change, 0, len(res.RowDatas))
	var last [][]byte
	for _, raw := range res.RowDatas {
		vals, nulls, err := splitRow(raw, len(tq.cols))
		if err != nil {
			return nil, nil, err
		}
		c := tq.change(vals, nulls, positionVersion, r.s.replace)
		c.Seq = stamp
		if r.seen != nil {
			r.seen[maphash.String(r.s.seed, c.Key)] = struct{}{}
		}
		changes = append(changes, c)
		last = vals
	}
	return changes, last, nil
}

// keyLiterals renders the primary key in a row's values as SQL literals (see literal).
func (q *tableQuery) keyLiterals(vals [][]byte) []string {
	after := make([]string, len(q.pkAt))
	for p, i := range q.pkAt {
		after[p] = literal(q.cols[i], vals[i])
	}
	return after
}

// pace waits out the rest of n rows' time at snapshot.rows_per_second; false if ctx ends.
func (r *run) pace(ctx context.Context, n int, chunkStart time.Time) bool {
	if limit := r.s.opts.RowsPerSecond; limit > 0 {
		want := time.Duration(float64(n) / float64(limit) * float64(time.Second))
		if wait := want - time.Since(chunkStart); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return false
			}
		}
	}
	return true
}
