package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	invclient "github.com/invsync/invsync/client"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/snapshot"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// keyScanChunk is how many primary keys one query of a Bloom rebuild reads.
const keyScanChunk = 10_000

// bloomCheckInterval is how often the Redis copies of the filters are checked.
const bloomCheckInterval = time.Second

// newKeeper returns the keeper of the tables' Bloom filters; a rebuild scans the primary
// keys from the source.
func newKeeper(cfg *config.Config, rdb redis.UniversalClient, tables []*canal.Table, log *zap.Logger, m *bloom.Metrics) *bloom.Keeper {
	specs := make([]bloom.TableSpec, len(tables))
	for i, t := range tables {
		specs[i] = bloom.TableSpec{Name: t.FullName(), Prefix: t.KeyPrefix, Key: cfg.BloomKey(cfg.Tables[i])}
	}
	scan := func(ctx context.Context, i int, add func(string)) error {
		conn, err := canal.Connect(ctx, cfg.Source)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := snapshot.PrepareSession(conn, cfg.Source.TimeZone); err != nil {
			return err
		}
		return snapshot.ScanKeys(ctx, conn, tables[i], keyScanChunk, add)
	}
	return bloom.NewKeeper(rdb, specs, cfg.Bloom.ExpectedItems, cfg.Bloom.FalsePositiveRate, scan, log, m)
}

// rebuildHandler is POST /bloom/rebuild: it rebuilds every table's filter from a scan
// of the source and swaps it in, and answers with the filters' figures.
func (d *Daemon) rebuildHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	k := d.keeper.Load()
	if k == nil {
		http.Error(w, "this instance does not lead the config (it stands by or is starting): ask the instance that leads (invsync status names its lock session)", http.StatusServiceUnavailable)
		return
	}
	if err := k.RebuildFromSource(r.Context()); err != nil {
		http.Error(w, "bloom rebuild failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(k.Stats())
}

// ClientTables describes the configured tables for package client.
func ClientTables(cfg *config.Config, tables ...*canal.Table) []invclient.Table {
	out := make([]invclient.Table, len(cfg.Tables))
	for i, t := range cfg.Tables {
		out[i] = invclient.Table{Name: t.TableName(), KeyPrefix: t.KeyPrefix, BloomKey: cfg.BloomKey(t)}
	}
	// With the tables' definitions, fills go under each row's own key (client.Table.PK).
	for _, t := range tables {
		out[t.Index].PK = append([]string(nil), t.PK...)
	}
	return out
}

// OpenClient returns the read path of package client over the configured Redis, with a
// loader that reads rows from the source as the snapshot does (`invsync get`). Call the
// returned function when done.
func OpenClient(ctx context.Context, cfg *config.Config, reg prometheus.Registerer) (*invclient.Client, func(), error) {
	db, err := OpenSourceDB(cfg.Source)
	if err != nil {
		return nil, nil, err
	}
	tables, err := canal.LoadTables(ctx, db, cfg.Tables)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	rdb := NewRedis(cfg.Redis)
	// Versions derived from positions belong to the checkpoint's epoch.
	var epoch uint32
	if stateDB, err := OpenStateDB(cfg, db); err == nil {
		if store, err := checkpoint.Open(ctx, stateDB, cfg.State.Schema, "default"); err == nil {
			if p, ok, err := store.Load(ctx); err == nil && ok {
				epoch = p.Epoch
			}
		}
		if stateDB != db {
			stateDB.Close()
		}
	}
	f := newFetcher(cfg, db, tables, func() uint32 { return epoch }, zap.NewNop())
	var mu sync.Mutex
	load := func(ctx context.Context, table string, pk []string) (*invclient.Row, error) {
		mu.Lock()
		defer mu.Unlock()
		c, found, err := f.fetch(ctx, table, strings.Join(pk, ":"))
		if err != nil || !found {
			return nil, err
		}
		row := &invclient.Row{Fields: make(map[string]string, len(c.Fields)), Version: c.Version}
		for _, fl := range c.Fields {
			row.Fields[fl.Name] = fl.Value
		}
		return row, nil
	}
	cl, err := invclient.New(rdb, ClientTables(cfg, tables...), load, invclient.Options{NullTTL: cfg.Bloom.NullTTL, Registerer: reg})
	if err != nil {
		f.close()
		rdb.Close()
		db.Close()
		return nil, nil, err
	}
	return cl, func() {
		mu.Lock()
		f.close()
		mu.Unlock()
		rdb.Close()
		db.Close()
	}, nil
}
