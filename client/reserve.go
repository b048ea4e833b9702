package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

// Reservations (flash sales). MySQL owns the committed stock; Redis owns the holds that
// buyers take before MySQL knows their orders:
//
//	available = committed stock − Σ active holds
//
// Reserve holds units when enough are available and the user's per-row limit allows it;
// it is idempotent by order id. The application then confirms the order in ONE MySQL
// transaction that takes the stock with a guarded UPDATE (... SET stock = stock - ?
// WHERE ... AND stock >= ?) and inserts the order's row into the settlement table; the
// invsync daemon applies both in one Redis call (the new stock, the hold ended), so
// available does not move. A cancelled or failed order is released (Release); a hold
// nobody releases or settles expires after its HoldTTL. See layout/holds.go for the keys.

// Reservations configures the holds of a table (tables[].reservations).
type Reservations struct {
	// StockColumn is the column of the committed stock (tables[].reservations.stock_column).
	StockColumn string
	// PerUserLimit caps the units one user holds or bought of one row; 0 is no limit.
	PerUserLimit int64
	// HoldTTL is how long a hold lasts unless released or settled. Default 15m.
	HoldTTL time.Duration
	// RecordTTL is how long a row's order records are kept. Default 168h.
	RecordTTL time.Duration
}

// Outcome of Reserve and Release.
type Outcome = layout.HoldOutcome

// The outcomes.
const (
	Held            = layout.Held
	SoldOut         = layout.SoldOut
	OverLimit       = layout.OverLimit
	UnknownRow      = layout.UnknownRow
	Released        = layout.Released
	AlreadyReleased = layout.AlreadyReleased
	AlreadyExpired  = layout.AlreadyExpired
	AlreadySettled  = layout.AlreadySettled
	UnknownOrder    = layout.UnknownOrder
)

// Reservation is Reserve's answer.
type Reservation = layout.Reservation

// ErrNoReservations is returned for a table without Reservations.
var ErrNoReservations = errors.New("client: the table has no reservations configured (tables[].reservations)")

func newHolds(rdb redis.UniversalClient, r Reservations) *layout.Holds {
	if r.HoldTTL <= 0 {
		r.HoldTTL = 15 * time.Minute
	}
	if r.RecordTTL <= 0 {
		r.RecordTTL = layout.DefaultRecordTTL
	}
	return layout.NewHolds(rdb, r.HoldTTL, max(r.RecordTTL, r.HoldTTL))
}

func (c *Client) reserving(name string) (*table, error) {
	t, err := c.table(name)
	if err != nil {
		return nil, err
	}
	if t.holds == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoReservations, t.Name)
	}
	return t, nil
}

// observe counts a call's outcome and its latency.
func (c *Client) observe(t *table, call string, start time.Time, outcome Outcome, err error) {
	c.m.holdLatency.WithLabelValues(call).Observe(time.Since(start).Seconds())
	if err != nil {
		outcome = "error"
	}
	c.m.holds.WithLabelValues(t.Name, call, string(outcome)).Inc()
}

// Reserve holds qty units of the row pk of table for orderID (bought by userID, which the
// per-user limit counts; "" for none). The same order id reserving again changes nothing
// and answers with its hold (Held) or with how it ended (AlreadyReleased, ...).
func (c *Client) Reserve(ctx context.Context, tableName string, pk []string, orderID, userID string, qty int64) (Reservation, error) {
	t, err := c.reserving(tableName)
	if err != nil {
		return Reservation{}, err
	}
	start := time.Now()
	r, err := t.holds.Reserve(ctx, layout.Key(t.KeyPrefix, pk), t.Reservations.StockColumn, orderID, userID, qty, t.Reservations.PerUserLimit)
	c.observe(t, "reserve", start, r.Outcome, err)
	return r, err
}

// Release gives the hold of orderID on the row pk back (a cancelled or failed order). It
// returns Released, or how the hold had ended before; and the units available after.
func (c *Client) Release(ctx context.Context, tableName string, pk []string, orderID string) (Outcome, int64, error) {
	t, err := c.reserving(tableName)
	if err != nil {
		return "", 0, err
	}
	start := time.Now()
	out, avail, err := t.holds.Release(ctx, layout.Key(t.KeyPrefix, pk), t.Reservations.StockColumn, orderID)
	c.observe(t, "release", start, out, err)
	return out, avail, err
}

// Refused is Release for an order whose confirmation MySQL refused for lack of stock (its
// guarded UPDATE changed no row): the hold is given back and the refusal is counted as a
// false admission (invsync_client_false_admissions_total), which stays 0 when every sale
// of the row goes through Reserve.
func (c *Client) Refused(ctx context.Context, tableName string, pk []string, orderID string) (Outcome, int64, error) {
	t, err := c.reserving(tableName)
	if err != nil {
		return "", 0, err
	}
	c.m.falseAdmit.WithLabelValues(t.Name).Inc()
	return c.Release(ctx, tableName, pk, orderID)
}

// Available returns the units of the row pk that can still be reserved and the units
// held; found is false when Redis holds no live row for it.
func (c *Client) Available(ctx context.Context, tableName string, pk ...string) (available, held int64, found bool, err error) {
	t, err := c.reserving(tableName)
	if err != nil {
		return 0, 0, false, err
	}
	start := time.Now()
	available, held, found, err = t.holds.Available(ctx, layout.Key(t.KeyPrefix, pk), t.Reservations.StockColumn)
	c.m.holdLatency.WithLabelValues("available").Observe(time.Since(start).Seconds())
	return available, held, found, err
}

// Holds lists the order records of the row pk (held, released, expired, settled).
func (c *Client) Holds(ctx context.Context, tableName string, pk ...string) ([]layout.Hold, error) {
	t, err := c.reserving(tableName)
	if err != nil {
		return nil, err
	}
	return t.holds.ListHolds(ctx, layout.Key(t.KeyPrefix, pk))
}
