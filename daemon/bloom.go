package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// keyScanChunk is how many primary keys one query of a Bloom rebuild reads.
const keyScanChunk = 10_000

// bloomCheckInterval is how often the Redis copies of the filters are checked.
const bloomCheckInterval = time.Second

// newKeeper returns the keeper of the tables' Bloom filters; a rebuild scans the primary
// keys from the source.
func newKeeper(cfg *config.Config, src source.Config, rdb redis.UniversalClient, tables []*source.Table, log *zap.Logger, m *bloom.Metrics) *bloom.Keeper {
	specs := make([]bloom.TableSpec, len(tables))
	for i, t := range tables {
		specs[i] = bloom.TableSpec{Name: t.FullName(), Prefix: t.KeyPrefix, Key: cfg.BloomKey(cfg.Tables[i])}
	}
	scan := func(ctx context.Context, i int, add func(string)) error {
		conn, err := src.Dial(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		return snapshot.ScanKeys(ctx, conn, tables[i], keyScanChunk, add)
	}
	k := bloom.NewKeeper(rdb, specs, cfg.Bloom.ExpectedItems, cfg.Bloom.FalsePositiveRate, scan, log, m)
	k.SizeFrom(func(ctx context.Context, i int) (uint64, error) {
		return snapshot.CountRows(ctx, src.Dial, tables[i])
	})
	return k
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
