package main

import (
	"bufio"
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
)

// StatusReport is what `invsync status` shows.
type StatusReport struct {
	Checkpoint    source.Position
	HasCheckpoint bool
	CheckpointAge time.Duration
	Source        source.Position
	// LeaderConnection is the state database connection id holding the leader lock; 0
	// when no instance leads.
	LeaderConnection int64
	// LeaderIdle is how long the leader's lock session has been idle (-1 when it is not
	// visible to the invsync user); past LeaseTimeout its instance is gone and a standby
	// takes over.
	LeaderIdle time.Duration
	// Leader is what the leading instance recorded about itself (LeaderKnown false: no
	// record of the instance that holds the lock now).
	Leader      checkpoint.Leader
	LeaderKnown bool
	// DaemonAddr is where the daemon was asked: the leader's recorded address, else
	// http.listen of the config.
	DaemonAddr string
	// Daemon is read from the daemon's /metrics at DaemonAddr; DaemonErr says why not.
	DaemonReachable bool
	DaemonErr       string
	Ready           bool
	LagSeconds      float64
	QueueDepth      float64
	Pending, Dead   int64
	OldestPending   time.Duration
	Bloom           []BloomStatus
	// Holds are the reservations of the tables that have them.
	Holds []HoldStatus
	// From the daemon's /metrics: settlements that ended a hold or found none, holds
	// the daemon expired.
	SettledHolds, SettledWithoutHold, HoldsExpired float64
}

// HoldStatus sums a table's reservations as Redis holds them.
type HoldStatus struct {
	Table string
	// Rows is the number of rows with units held; Held the units held.
	Rows int64
	Held int64
}

// BloomStatus describes a table's filter as Redis holds it.
type BloomStatus struct {
	Table    string
	Key      string
	Complete bool
	Bits     uint
	Hashes   uint
	// SetBits is BITCOUNT; Items the number of keys it implies; FalsePositiveRate the rate
	// expected at that many.
	SetBits           int64
	Items             float64
	FalsePositiveRate float64
}

// readStatus gathers the status of the instance that the config describes.
func readStatus(ctx context.Context, cfg *config.Config) (*StatusReport, error) {
	c, err := daemon.Open(cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st := &StatusReport{}
	if err := st.readState(ctx, c); err != nil {
		return nil, err
	}
	for _, t := range cfg.Tables {
		bs, err := bloomStatus(ctx, c.Redis, t.TableName(), cfg.BloomKey(t))
		if err != nil {
			return nil, err
		}
		st.Bloom = append(st.Bloom, bs)
		if t.Reservations != nil {
			hs, err := holdStatus(ctx, c.Redis, t)
			if err != nil {
				return nil, err
			}
			st.Holds = append(st.Holds, hs)
		}
	}
	if st.Leader, st.LeaderKnown, err = c.Leader(ctx); err != nil {
		return nil, err
	}
	st.DaemonAddr = cfg.HTTP.Listen
	var why string
	if st.LeaderKnown && st.Leader.HTTPAddr != "" {
		st.DaemonAddr, why = st.Leader.Endpoint()
	}
	switch {
	case why != "":
		st.DaemonErr = why
	case st.DaemonAddr == "":
		st.DaemonErr = "http.listen is off"
	default:
		st.readDaemon()
	}
	return st, nil
}

// readState reads the checkpoint, the source's position, the lock's holder and the
// compensation table.
func (st *StatusReport) readState(ctx context.Context, c *daemon.Conns) error {
	store, err := c.Checkpoint(ctx)
	if err != nil {
		return err
	}
	if st.Checkpoint, st.HasCheckpoint, err = store.Load(ctx); err != nil {
		return err
	}
	if st.CheckpointAge, _, err = store.Age(ctx); err != nil {
		return err
	}
	if st.Source, err = source.CurrentPosition(ctx, c.DB, c.Source.Flavor, nil); err != nil {
		return err
	}
	if st.LeaderConnection, st.LeaderIdle, err = c.LockHolder(ctx); err != nil {
		return err
	}
	comp, err := c.Compensation(ctx)
	if err != nil {
		return err
	}
	st.Pending, st.Dead, st.OldestPending, err = comp.Counts(ctx)
	return err
}

// bloomStatus reads the Redis copy of a table's Bloom filter.
func bloomStatus(ctx context.Context, rdb redis.UniversalClient, table, key string) (BloomStatus, error) {
	bs := BloomStatus{Table: table, Key: key}
	m, k, err := bloom.NewMirror(rdb, key).Params(ctx)
	if errors.Is(err, bloom.ErrNoFilter) {
		return bs, nil
	} else if err != nil {
		return bs, err
	}
	bs.Bits, bs.Hashes = m, k
	n, err := rdb.BitCount(ctx, key, nil).Result()
	if err != nil {
		return bs, err
	}
	bs.SetBits = n
	bs.Complete = rdb.StrLen(ctx, key).Val() == int64((m+7)/8)
	if float64(n) < float64(m) {
		bs.Items = -float64(m) / float64(k) * math.Log(1-float64(n)/float64(m))
	} else {
		bs.Items = math.Inf(1)
	}
	bs.FalsePositiveRate = bloom.FalsePositiveRate(m, k, uint(min(bs.Items, float64(math.MaxInt64))))
	return bs, nil
}

// readDaemon reads the leader's readiness, lag and queue from its /metrics.
func (st *StatusReport) readDaemon() {
	hc := &http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Get("http://" + st.DaemonAddr + "/metrics")
	if err != nil {
		st.DaemonErr = err.Error()
		return
	}
	defer resp.Body.Close()
	st.DaemonReachable = true
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "invsync_ready":
			st.Ready = v == 1
		case "invsync_replication_lag_seconds":
			st.LagSeconds = v
		case "invsync_queue_depth":
			st.QueueDepth = v
		case `invsync_settlements_total{result="hold_ended"}`:
			st.SettledHolds = v
		case `invsync_settlements_total{result="no_hold"}`:
			st.SettledWithoutHold = v
		case "invsync_holds_expired_total":
			st.HoldsExpired = v
		}
	}
}

// holdStatus sums the held totals of a table's rows (SCAN of their K:n keys).
func holdStatus(ctx context.Context, rdb redis.UniversalClient, t config.Table) (HoldStatus, error) {
	hs := HoldStatus{Table: t.TableName()}
	err := redisscan.Keys(ctx, rdb, redisscan.GlobEscape(t.KeyPrefix)+"{*}:n", 500, func(ctx context.Context, keys []string) error {
		for _, k := range keys {
			n, err := rdb.Get(ctx, k).Int64()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return err
			}
			if n > 0 {
				hs.Rows++
				hs.Held += n
			}
		}
		return nil
	}, nil)
	return hs, err
}
