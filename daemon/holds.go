package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Settlements reads the definitions of the settlement tables of the configured tables
// with reservations (tables from Tables) for the binlog reader.
func (c *Conns) Settlements(ctx context.Context, tables []*source.Table) ([]canal.Settlement, error) {
	var out []canal.Settlement
	for _, t := range tables {
		r := c.Cfg.Tables[t.Index].Reservations
		if r == nil {
			continue
		}
		st := r.Settlement
		keys := st.KeyColumns
		if len(keys) == 0 {
			keys = t.PK
		}
		if len(keys) != len(t.PK) {
			return nil, fmt.Errorf("%w: tables[%d].reservations.settlement.key_columns names %d columns, the primary key of %s has %d",
				source.ErrTable, t.Index, len(keys), t.FullName(), len(t.PK))
		}
		cols := append([]string{st.OrderColumn, st.QuantityColumn}, keys...)
		if st.UserColumn != "" {
			cols = append(cols, st.UserColumn)
		}
		defs, err := source.LoadTables(ctx, c.DB, []source.Spec{{Schema: st.Schema, Table: st.Table, Columns: cols}})
		if err != nil {
			return nil, fmt.Errorf("tables[%d].reservations.settlement: %w", t.Index, err)
		}
		out = append(out, canal.Settlement{Table: defs[0], Stock: t, Order: st.OrderColumn, Quantity: st.QuantityColumn,
			User: st.UserColumn, Key: keys})
	}
	return out, nil
}

// recordTTL is the longest reservations.record_ttl of the tables (the writer's, for the
// records that settlements write).
func recordTTL(cfg *config.Config) time.Duration {
	d := layout.DefaultRecordTTL
	found := false
	for _, t := range cfg.Tables {
		if r := t.Reservations; r != nil && (!found || r.RecordTTL > d) {
			d, found = r.RecordTTL, true
		}
	}
	return d
}

// sweepInterval is how often the daemon looks for expired holds: a quarter of the
// shortest hold_ttl, between 1s and 1m (reservations sweep their own row's holds first,
// so this only matters for rows nobody reserves any more). 0: no table has reservations.
func sweepInterval(cfg *config.Config) time.Duration {
	var d time.Duration
	for _, t := range cfg.Tables {
		if r := t.Reservations; r != nil && (d == 0 || r.HoldTTL/4 < d) {
			d = r.HoldTTL / 4
		}
	}
	if d == 0 {
		return 0
	}
	return min(max(d, time.Second), time.Minute)
}

// sweepHolds ends the holds past their expiry on every row with reservations, every
// sweepInterval, until ctx ends.
func (l *leader) sweepHolds(ctx context.Context) {
	every := sweepInterval(l.d.cfg)
	if every == 0 {
		<-ctx.Done()
		return
	}
	holds := layout.NewHolds(l.rdb, 0, 0)
	log := l.d.log.Named("holds")
	everyTick(ctx, every, func() bool {
		for _, tc := range l.d.cfg.Tables {
			if tc.Reservations != nil {
				l.sweepTable(ctx, holds, tc, log)
			}
		}
		return true
	})
}

// sweepTable expires the due holds of every row of table tc.
func (l *leader) sweepTable(ctx context.Context, holds *layout.Holds, tc config.Table, log *zap.Logger) {
	pattern := redisscan.GlobEscape(tc.KeyPrefix) + "{*}:x"
	err := redisscan.Keys(ctx, l.rdb, pattern, 500, func(ctx context.Context, keys []string) error {
		for _, k := range keys {
			key := strings.TrimSuffix(k, ":x")
			n, err := holds.Sweep(ctx, key, 1000)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				log.Warn("cannot sweep the holds of a row; going on with the others", zap.String("key", key), zap.Error(err))
				continue
			}
			if n > 0 {
				l.d.m.HoldsExpired.Add(float64(n))
				log.Info("holds expired", zap.String("key", key), zap.Int64("holds", n))
			}
		}
		return nil
	}, nil)
	if err != nil && ctx.Err() == nil {
		log.Warn("cannot sweep expired holds; trying again", zap.String("table", tc.TableName()), zap.Error(err))
	}
}

// warnEviction logs when Redis may evict keys on its own while tables have reservations:
// a hold key evicted alone (they carry TTLs, the first a volatile-* policy evicts)
// makes available read higher than it is.
func (l *leader) warnEviction(ctx context.Context) {
	if sweepInterval(l.d.cfg) == 0 {
		return
	}
	res, err := l.rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		return // CONFIG may be renamed or refused: nothing to say
	}
	for _, p := range res {
		if p != "noeviction" {
			l.d.log.Warn("Redis's maxmemory-policy evicts keys: a reservation key evicted alone makes available read too high (fix: CONFIG SET maxmemory-policy noeviction)",
				zap.String("maxmemory-policy", p))
		}
	}
}
