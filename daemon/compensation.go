package daemon

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"go.uber.org/zap"
)

// fetcher reads single rows from the source for the compensation retrier, with a
// text-protocol session like the snapshot's.
type fetcher struct {
	epoch  func() uint32
	warn   func(error)
	cfg    *config.Config
	db     *sql.DB
	tables map[string]*canal.Table
	conn   *client.Conn
}

func newFetcher(cfg *config.Config, db *sql.DB, tables []*canal.Table, epoch func() uint32, log *zap.Logger) *fetcher {
	f := &fetcher{cfg: cfg, db: db, tables: map[string]*canal.Table{}, epoch: epoch,
		warn: func(err error) {
			log.Warn("rows read again may miss a transaction committing as they are read", zap.Error(err))
		}}
	for _, t := range tables {
		f.tables[t.FullName()] = t
	}
	return f
}

func (f *fetcher) close() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

func (f *fetcher) fetch(ctx context.Context, table, pk string) (layout.Change, bool, error) {
	t := f.tables[table]
	if t == nil {
		return layout.Change{}, false, fmt.Errorf("table %s is not mirrored (any more)", table)
	}
	parts, err := layout.SplitInner(pk, len(t.PK))
	if err != nil {
		return layout.Change{}, false, fmt.Errorf("the key of %s: %w", table, err)
	}
	if f.conn == nil {
		conn, err := canal.Connect(ctx, f.cfg.Source)
		if err != nil {
			return layout.Change{}, false, fmt.Errorf("connect to the source: %w", err)
		}
		if err := snapshot.PrepareSession(conn, f.cfg.Source.TimeZone); err != nil {
			conn.Close()
			return layout.Change{}, false, err
		}
		f.conn = conn
	}
	// The row as of now, read in a consistent snapshot and stamped with its exact
	// position: ordered against the stream's writes by position (see snapshot.SeqOf).
	var c layout.Change
	var found bool
	pos, err := canal.ReadConsistent(f.conn, f.cfg.Source.Flavor, f.epoch(), f.warn, func(pos canal.Position) error {
		version := ""
		if t.VersionColumn == "" {
			version = strconv.FormatUint(snapshot.PositionVersion(pos), 10)
		}
		var err error
		c, found, err = snapshot.Fetch(f.conn, t, parts, version)
		return err
	})
	if err != nil {
		f.close()
	}
	c.Seq = snapshot.SeqOf(pos)
	return c, found, err
}

// OpenCompensation opens the compensation table for `invsync compensation`; close the
// returned function when done.
func OpenCompensation(ctx context.Context, cfg *config.Config) (*compensation.Store, func(), error) {
	db, err := OpenSourceDB(cfg.Source)
	if err != nil {
		return nil, nil, err
	}
	stateDB, err := OpenStateDB(cfg, db)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	closeAll := func() {
		if stateDB != db {
			stateDB.Close()
		}
		db.Close()
	}
	st, err := compensation.Open(ctx, stateDB, cfg.State.Schema, compensation.NewSchedule(cfg.Compensation), time.Now)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return st, closeAll, nil
}
