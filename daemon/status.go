package daemon

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/redis/go-redis/v9"
)

// StatusReport is what `invsync status` shows.
type StatusReport struct {
	Checkpoint    canal.Position
	HasCheckpoint bool
	CheckpointAge time.Duration
	Source        canal.Position
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

// Status gathers the status of the instance that the config describes.
func Status(ctx context.Context, cfg *config.Config) (*StatusReport, error) {
	db, err := OpenSourceDB(cfg.Source)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	stateDB, err := OpenStateDB(cfg, db)
	if err != nil {
		return nil, err
	}
	if stateDB != db {
		defer stateDB.Close()
	}
	st := &StatusReport{}
	if err := st.readState(ctx, cfg, db, stateDB); err != nil {
		return nil, err
	}
	rdb := NewRedis(cfg.Redis)
	defer rdb.Close()
	for _, t := range cfg.Tables {
		bs, err := bloomStatus(ctx, rdb, t.TableName(), cfg.BloomKey(t))
		if err != nil {
			return nil, err
		}
		st.Bloom = append(st.Bloom, bs)
	}
	if st.Leader, st.LeaderKnown, err = checkpoint.ReadLeader(ctx, stateDB, cfg.State.Schema, pipelineName, LockName(cfg)); err != nil {
		return nil, err
	}
	var why string
	st.DaemonAddr, why = leaderAddr(st.Leader, st.LeaderKnown && st.Leader.HTTPAddr != "", cfg.HTTP.Listen)
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
func (st *StatusReport) readState(ctx context.Context, cfg *config.Config, db, stateDB *sql.DB) error {
	store, err := checkpoint.Open(ctx, stateDB, cfg.State.Schema, "default")
	if err != nil {
		return err
	}
	if st.Checkpoint, st.HasCheckpoint, err = store.Load(ctx); err != nil {
		return err
	}
	if st.CheckpointAge, _, err = store.Age(ctx); err != nil {
		return err
	}
	if st.Source, err = canal.CurrentPosition(ctx, db, cfg.Source.Flavor, nil); err != nil {
		return err
	}
	var holder sql.NullInt64
	if err := stateDB.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", LockName(cfg)).Scan(&holder); err != nil {
		return err
	}
	st.LeaderConnection = holder.Int64
	if holder.Valid {
		st.LeaderIdle = -1
		var secs sql.NullInt64
		if err := stateDB.QueryRowContext(ctx, "SELECT TIME FROM information_schema.PROCESSLIST WHERE ID = ? AND COMMAND = 'Sleep'", holder.Int64).Scan(&secs); err == nil {
			st.LeaderIdle = time.Duration(secs.Int64) * time.Second
		} else if errors.Is(err, sql.ErrNoRows) {
			st.LeaderIdle = 0 // busy, or not visible: assume alive
		}
	}
	comp, err := compensation.Open(ctx, stateDB, cfg.State.Schema, compensation.NewSchedule(cfg.Compensation), time.Now)
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
		}
	}
}

// leaderAddr returns where to reach the leader's HTTP endpoint: the address it recorded
// (checkpoint.ReadLeader), unless that is a loopback address on another host (then ""
// and why), else fallback.
func leaderAddr(l checkpoint.Leader, known bool, fallback string) (addr, why string) {
	if !known {
		return fallback, ""
	}
	host, _, err := net.SplitHostPort(l.HTTPAddr)
	if ip := net.ParseIP(host); err == nil && (host == "localhost" || (ip != nil && ip.IsLoopback())) {
		if me, _ := os.Hostname(); me != l.Host {
			return "", fmt.Sprintf("the leader runs on %s and its HTTP endpoint listens on loopback only (%s): set http.listen (or http.advertise) to an address other hosts reach", l.Host, l.HTTPAddr)
		}
	}
	return l.HTTPAddr, ""
}
