package reconcile

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// The kinds of differences in a row's reservations (see layout/holds.go).
const (
	// HeldTotal: the recorded held total is not the sum of the active holds.
	HeldTotal Kind = "held_total"
	// ExpiredHold: an active hold is past its expiry (the sweep did not end it).
	ExpiredHold Kind = "expired_hold"
	// SettledHold: an active hold's order has a row in the settlement table (its
	// settlement was not applied to Redis).
	SettledHold Kind = "settled_hold"
)

// HoldCheck names what the check of a table's holds needs: the settlement table and its
// order column (an order with a row there is settled).
type HoldCheck struct {
	SettlementSchema, SettlementTable, OrderColumn string
}

// holdKeysBatch is how many rows' reservations are checked per batch.
const holdKeysBatch = 200

// activeHold is an active hold read from Redis.
type activeHold struct {
	key     string
	h       layout.Hold
	expired bool // past its expiry (by more than the re-check time)
}

// holds checks the reservations of table t (Deps.Holds): the held total of each row
// against its active holds, active holds whose order MySQL has settled, and holds past
// their expiry; with Repair it fixes each.
func (r *runner) holds(ctx context.Context, t *source.Table, hc HoldCheck, tr *TableReport) error {
	hs := layout.NewHolds(r.d.RDB, 0, 0)
	var active []activeHold
	check := func(ctx context.Context, keys []string) error {
		for _, k := range keys {
			a, err := r.rowHolds(ctx, hs, strings.TrimSuffix(k, ":o"), tr)
			if err != nil {
				return err
			}
			active = append(active, a...)
		}
		return nil
	}
	if err := redisscan.Keys(ctx, r.d.RDB, redisscan.GlobEscape(t.KeyPrefix)+"{*}:o", holdKeysBatch, check, func() { active = nil }); err != nil {
		return fmt.Errorf("reconcile: scan the reservations of %s: %w", t.FullName(), err)
	}
	for i := 0; i < len(active); i += holdKeysBatch {
		if err := r.settledHolds(ctx, hs, hc, active[i:min(i+holdKeysBatch, len(active))], tr); err != nil {
			return err
		}
	}
	return r.expiredHolds(ctx, hs, active, tr)
}

// rowHolds checks one row's held total and returns its active holds.
func (r *runner) rowHolds(ctx context.Context, hs *layout.Holds, key string, tr *TableReport) ([]activeHold, error) {
	list, err := hs.ListHolds(ctx, key)
	if err != nil {
		return nil, err
	}
	held, err := hs.Held(ctx, key)
	if err != nil {
		return nil, err
	}
	var sum int64
	var active []activeHold
	grace := time.Now().Add(-max(r.opts.Recheck, time.Second))
	for _, h := range list {
		if h.State == "held" {
			sum += h.Qty
			active = append(active, activeHold{key: key, h: h, expired: h.Expires.Before(grace)})
		}
	}
	if sum != held {
		r.note(tr, HeldTotal, fmt.Sprintf("%s held %d, active holds %d", key, held, sum))
		if r.opts.Repair {
			if _, _, err := hs.RepairTotal(ctx, key); err != nil {
				return nil, err
			}
			tr.Repaired[HeldTotal]++
		}
	}
	return active, nil
}

// expiredHolds reports the holds of active still past their expiry (those not found
// settled) and, with Repair, expires them.
func (r *runner) expiredHolds(ctx context.Context, hs *layout.Holds, active []activeHold, tr *TableReport) error {
	for _, a := range active {
		if !a.expired {
			continue
		}
		still, err := stillHeld(ctx, hs, a)
		if err != nil {
			return err
		}
		if !still {
			continue
		}
		r.note(tr, ExpiredHold, a.key+" order "+a.h.Order)
		if r.opts.Repair {
			if _, err := hs.Sweep(ctx, a.key, 1000); err != nil {
				return err
			}
			if still, err := stillHeld(ctx, hs, a); err == nil && !still {
				tr.Repaired[ExpiredHold]++
			}
		}
	}
	return nil
}

// settledHolds finds the holds of batch whose order has a settlement row in MySQL, and
// re-checks each after opts.Recheck (the daemon may be applying it): one still active is
// reported and, with Repair, ended as settled.
func (r *runner) settledHolds(ctx context.Context, hs *layout.Holds, hc HoldCheck, batch []activeHold, tr *TableReport) error {
	settled, err := r.settledOrders(ctx, hc, batch)
	if err != nil || len(settled) == 0 {
		return err
	}
	select {
	case <-time.After(r.opts.Recheck):
	case <-ctx.Done():
		return ctx.Err()
	}
	for i := range batch {
		a := &batch[i]
		if !settled[a.h.Order] {
			continue
		}
		a.expired = false // settled, not abandoned
		still, err := stillHeld(ctx, hs, *a)
		if err != nil {
			return err
		}
		if !still {
			continue
		}
		r.note(tr, SettledHold, a.key+" order "+a.h.Order)
		if r.opts.Repair {
			c := layout.Change{Key: a.key, Op: layout.OpSettle, Settles: []layout.Settle{{Order: a.h.Order, User: a.h.User, Qty: a.h.Qty}}}
			out := make([]layout.Outcome, 1)
			if err := r.d.Writer.Apply(ctx, []layout.Change{c}, out); err != nil {
				return err
			}
			if out[0].Settled > 0 {
				tr.Repaired[SettledHold]++
			}
		}
	}
	return nil
}

// settledOrders returns which orders of batch have a row in the settlement table.
func (r *runner) settledOrders(ctx context.Context, hc HoldCheck, batch []activeHold) (map[string]bool, error) {
	args := make([]any, len(batch))
	for i, a := range batch {
		args[i] = a.h.Order
	}
	q := fmt.Sprintf("SELECT %s FROM %s.%s WHERE %s IN (%s)", source.QuoteIdent(hc.OrderColumn), source.QuoteIdent(hc.SettlementSchema), source.QuoteIdent(hc.SettlementTable),
		source.QuoteIdent(hc.OrderColumn), strings.TrimSuffix(strings.Repeat("?,", len(batch)), ","))
	rows, err := r.d.DB.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reconcile: read the settlement table %s.%s: %w", hc.SettlementSchema, hc.SettlementTable, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			return nil, err
		}
		out[o] = true
	}
	return out, rows.Err()
}

// stillHeld reports whether a's hold is still active.
func stillHeld(ctx context.Context, hs *layout.Holds, a activeHold) (bool, error) {
	h, ok, err := hs.Record(ctx, a.key, a.h.Order)
	return ok && h.State == "held", err
}

// note counts a difference of kind and keeps a sample.
func (r *runner) note(tr *TableReport, kind Kind, sample string) {
	tr.Differences[kind]++
	if len(tr.Samples[kind]) < r.opts.Samples {
		tr.Samples[kind] = append(tr.Samples[kind], sample)
	}
	r.d.Log.Debug("reservation difference", zap.String("kind", string(kind)), zap.String("sample", sample))
}
