package snapshot

import (
	"context"
	"fmt"
	"strconv"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Fetcher reads single rows from the source by key (the compensation retrier, the read
// path's loader), each in a consistent snapshot stamped with its exact position, over
// one session like the snapshot's. It is not safe for concurrent use.
type Fetcher struct {
	epoch  func() uint32
	warn   func(error)
	src    source.Config
	tables map[string]*source.Table
	conn   *client.Conn
}

// NewFetcher reads rows of tables from src; epoch is the epoch of the positions rows are
// stamped with (the checkpoint's).
func NewFetcher(src source.Config, tables []*source.Table, epoch func() uint32, log *zap.Logger) *Fetcher {
	f := &Fetcher{src: src, tables: map[string]*source.Table{}, epoch: epoch,
		warn: func(err error) {
			log.Warn("rows read again may miss a transaction committing as they are read", zap.Error(err))
		}}
	for _, t := range tables {
		f.tables[t.FullName()] = t
	}
	return f
}

// Close closes the session.
func (f *Fetcher) Close() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

// Fetch reads the row of table (schema.table) whose key is pk (the key's part after its
// prefix, layout.KeyInner), as of now; found is false when no row has that key.
func (f *Fetcher) Fetch(ctx context.Context, table, pk string) (layout.Change, bool, error) {
	t := f.tables[table]
	if t == nil {
		return layout.Change{}, false, fmt.Errorf("table %s is not mirrored (any more)", table)
	}
	parts, err := layout.SplitInner(pk, len(t.PK))
	if err != nil {
		return layout.Change{}, false, fmt.Errorf("the key of %s: %w", table, err)
	}
	if f.conn == nil {
		conn, err := f.src.Dial(ctx)
		if err != nil {
			return layout.Change{}, false, fmt.Errorf("connect to the source: %w", err)
		}
		f.conn = conn
	}
	// The row as of now, read in a consistent snapshot and stamped with its exact
	// position: ordered against the stream's writes by position (see SeqOf).
	var c layout.Change
	var found bool
	pos, err := source.ReadConsistent(f.conn, f.src.Flavor, f.epoch(), f.warn, func(pos source.Position) error {
		version := ""
		if t.VersionColumn == "" {
			version = strconv.FormatUint(PositionVersion(pos), 10)
		}
		var err error
		c, found, err = Fetch(f.conn, t, parts, version)
		return err
	})
	if err != nil {
		f.Close()
	}
	c.Seq = SeqOf(pos)
	return c, found, err
}
