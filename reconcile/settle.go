package reconcile

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"time"

	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// warn logs that re-reads cannot be stamped exactly (see source.ErrNoExactPosition).
func (r *runner) warn(err error) {
	r.d.Log.Warn("rows re-read may miss a transaction committing as they are read", zap.Error(err))
}

// settle re-checks candidates until they agree, the re-check time runs out, or they
// are all explained; what remains is reported (and repaired).
func (r *runner) settle(ctx context.Context, t *source.Table, tr *TableReport, cands []candidate) error {
	delay := backoff.New(100*time.Millisecond, 2*time.Second)
	for len(cands) > 0 {
		found, p0, err := r.reread(t, cands)
		if err != nil {
			return err
		}
		at := snapshot.SeqOf(p0)
		if err := r.waitApplied(ctx, at); err != nil {
			return err
		}
		still, err := r.stillDiffering(ctx, t, cands, found, at)
		if err != nil {
			return err
		}
		var due []candidate
		cands, due = r.splitDue(still, delay)
		if len(due) > 0 {
			if err := r.report(ctx, tr, due, at); err != nil {
				return err
			}
		}
		if len(cands) == 0 {
			return nil
		}
		if err := delay.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// lagWaitLimit bounds how long waitApplied waits in one run, over all its calls, for a
// daemon that keeps writing but stays behind the re-reads.
const lagWaitLimit = time.Minute

// waitApplied waits until the daemon has written every change up to at to Redis (its
// applied markers, Deps.Applied, reach at): a key then still behind the re-read is not
// the daemon's lag, however long the daemon lags. It gives up (the re-check window alone
// judges, as when no daemon runs) when no markers are known, when they stop moving for
// longer than the daemon takes to move them (no daemon runs, it is stuck, or it has
// nothing to write; it is not waited for again in this run), or once the run has waited
// lagWaitLimit.
func (r *runner) waitApplied(ctx context.Context, at layout.Seq) error {
	if r.d.Applied == nil || r.noDaemon {
		return nil
	}
	still := max(r.opts.Recheck, 2*r.d.AppliedEvery+time.Second)
	start, moved := time.Now(), time.Now()
	defer func() { r.lagWaited += time.Since(start) }()
	var last layout.Seq
	for {
		applied, err := r.d.Applied(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.d.Log.Warn("reconcile: cannot read how far the daemon has written; differences are judged by reconcile.recheck_for alone", zap.Error(err))
			r.noDaemon = true
			return nil
		}
		if applied.IsZero() {
			return nil
		}
		if !applied.Less(at) {
			return nil
		}
		if applied != last {
			last, moved = applied, time.Now()
		}
		if time.Since(moved) >= still {
			r.noDaemon = true
			return nil
		}
		if r.lagWaited+time.Since(start) >= lagWaitLimit {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(appliedPoll):
		}
	}
}

// appliedPoll is how often waitApplied reads the applied markers.
const appliedPoll = 100 * time.Millisecond

// reread reads the candidates' rows again, and returns the position they were read at.
func (r *runner) reread(t *source.Table, cands []candidate) (map[string]snapshot.Row, source.Position, error) {
	// The rows are read again in one consistent snapshot, stamped with its exact
	// position: a transaction before it is in what was read, and a key the stream
	// wrote after it is newer than the re-read.
	found := make(map[string]snapshot.Row, len(cands))
	p0, err := source.ReadConsistent(r.recheck, r.d.Source.Flavor, r.d.Epoch(), r.warn, func(p0 source.Position) error {
		pv := ""
		if t.VersionColumn == "" {
			pv = strconv.FormatUint(snapshot.PositionVersion(p0), 10)
		}
		for i := 0; i < len(cands); i += fetchBatch {
			pks := make([][]string, 0, fetchBatch)
			for _, c := range cands[i:min(i+fetchBatch, len(cands))] {
				pks = append(pks, c.pk)
			}
			m, err := snapshot.FetchRows(r.recheck, t, pks, pv)
			if err != nil {
				return fmt.Errorf("reconcile: re-read: %w", err)
			}
			for k, v := range m {
				found[k] = v
			}
		}
		return nil
	})
	return found, p0, err
}

// stillDiffering reads the candidates' keys from Redis again; it keeps those that differ.
func (r *runner) stillDiffering(ctx context.Context, t *source.Table, cands []candidate, found map[string]snapshot.Row, at layout.Seq) ([]candidate, error) {
	pipe := r.d.RDB.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(cands))
	for i, c := range cands {
		cmds[i] = pipe.HGetAll(ctx, c.key)
	}
	if _, err := pipe.Exec(ctx); err != nil && !allKeyErrors(cmds) {
		return nil, fmt.Errorf("reconcile: read Redis: %w", err)
	}
	still := cands[:0]
	for i, c := range cands {
		h, herr := cmds[i].Result()
		if herr == nil && h[layout.FieldSeq] != "" {
			if s, err := layout.ParseSeq(h[layout.FieldSeq]); err == nil && at.Less(s) {
				continue // the stream wrote it after the re-read: a newer full row
			}
		}
		var row *snapshot.Row
		if f, ok := found[c.key]; ok {
			row = &f
		}
		versioned := t.VersionColumn != ""
		kind, differs := classify(row, h, herr, versioned)
		if !differs {
			continue
		}
		// Behind MySQL (an older version, a row or a delete not there yet) while the
		// stream keeps writing the key: lag on a hot key, not drift. A difference at
		// the same version (what the stream wrote is wrong) is reported however often
		// the key is written; so is any difference of a table without a version
		// column once the key stops changing.
		if herr == nil && h[layout.FieldSeq] > c.sight && (kind != Mismatch || !versioned) {
			continue
		}
		c.kind, c.row, c.obs = kind, row, observe(h, herr)
		still = append(still, c)
	}
	return still, nil
}

// splitDue splits still into the candidates to re-check again and those to report now.
func (r *runner) splitDue(still []candidate, delay *backoff.Exponential) (cands, due []candidate) {
	// Each candidate is re-checked for the whole window from when it was first seen
	// (a long walk must not shorten it: a running daemon's lag is not drift).
	cands = still[:0:0]
	next := time.Now().Add(delay.Current())
	for _, c := range still {
		if next.After(c.seen.Add(r.opts.Recheck)) {
			due = append(due, c)
		} else {
			cands = append(cands, c)
		}
	}
	return cands, due
}

// report counts confirmed differences and repairs them when asked.
func (r *runner) report(ctx context.Context, tr *TableReport, cands []candidate, at layout.Seq) error {
	for _, c := range cands {
		tr.Differences[c.kind]++
		if len(tr.Samples[c.kind]) < r.opts.Samples {
			tr.Samples[c.kind] = append(tr.Samples[c.kind], c.key)
		}
	}
	if !r.opts.Repair || len(cands) == 0 {
		return nil
	}
	repairs := make([]layout.Repair, len(cands))
	var rows []layout.Change
	for i, c := range cands {
		rp := layout.Repair{Observed: c.obs, At: at}
		switch {
		case c.row != nil:
			rp.Change = c.row.Change
			rows = append(rows, c.row.Change)
		case c.kind == Extra:
			rp.Change = layout.Change{Key: c.key, Op: layout.OpDelete, Version: c.obs.Version}
		default: // a value of another type where no row exists: remove it
			rp.Change = layout.Change{Key: c.key}
		}
		repairs[i] = rp
	}
	if r.d.Ensure != nil && len(rows) > 0 {
		if err := r.d.Ensure(ctx, rows); err != nil {
			return fmt.Errorf("reconcile: bloom bits before the repairs: %w", err)
		}
	}
	for i := 0; i < len(repairs); i += 500 {
		part := repairs[i:min(i+500, len(repairs))]
		ok, err := r.d.Writer.Repair(ctx, part)
		if err != nil {
			return fmt.Errorf("reconcile: repair: %w", err)
		}
		for j, done := range ok {
			if done {
				tr.Repaired[cands[i+j].kind]++
			}
		}
	}
	return nil
}

// extras scans the keys under the table's prefix for live hashes (or values of another
// type) whose key the walk did not see, and settles them.
func (r *runner) extras(ctx context.Context, t *source.Table, tr *TableReport, seen []uint64) error {
	var cands []candidate
	var scanned int64
	check := func(ctx context.Context, keys []string) error {
		// Read through the client: in a cluster it follows a key that moved (MOVED, ASK).
		pipe := r.d.RDB.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, 0, len(keys))
		var ks []string
		for _, k := range keys {
			scanned++
			if _, ok := slices.BinarySearch(seen, maphash.String(r.seed, k)); ok {
				continue
			}
			ks = append(ks, k)
			cmds = append(cmds, pipe.HGetAll(ctx, k))
		}
		if len(ks) == 0 {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil && !allKeyErrors(cmds) {
			return err
		}
		for i, k := range ks {
			h, herr := cmds[i].Result()
			kind, differs := classify(nil, h, herr, false)
			if !differs {
				continue
			}
			prefix, inner, ok := layout.InnerOf(k)
			pk, err := layout.SplitInner(inner, len(t.PK))
			if !ok || prefix != t.KeyPrefix || err != nil {
				tr.Unverifiable++
				continue
			}
			cands = append(cands, candidate{key: k, pk: pk, kind: kind, seen: time.Now(), sight: h[layout.FieldSeq]})
		}
		return nil
	}
	unverifiable := tr.Unverifiable
	// A cluster that reshards under the scan is scanned again from the start.
	restart := func() {
		r.d.Log.Warn("the Redis Cluster resharded during the scan of the keys: scanning again", zap.String("table", t.FullName()))
		cands, scanned, tr.Unverifiable = nil, 0, unverifiable
	}
	if err := redisscan.Keys(ctx, r.d.RDB, redisscan.GlobEscape(t.KeyPrefix)+"{*}", 500, check, restart); err != nil {
		return fmt.Errorf("reconcile: scan the keys of %s: %w", t.FullName(), err)
	}
	tr.KeysScanned += scanned
	for i := 0; i < len(cands); i += recheckBatch {
		if err := r.settle(ctx, t, tr, cands[i:min(i+recheckBatch, len(cands))]); err != nil {
			return err
		}
	}
	return nil
}
