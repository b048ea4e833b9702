package daemon

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// LockName is the MySQL named lock (GET_LOCK, on the state database) that the instance
// leading a config holds while it runs: the binlog stream, the writes and the scheduled
// reconciliation belong to it. A named lock lives as long as the connection that took it.
func LockName(cfg *config.Config) string {
	name := "invsync:" + cfg.State.Schema
	if len(name) > 64 {
		sum := sha256.Sum256([]byte(name))
		name = "invsync:" + hex.EncodeToString(sum[:16])
	}
	return name
}

// Lock is a held named lock.
type Lock struct {
	conn *sql.Conn
	name string
	id   int64 // the connection's id on the state database
	// keeping runs keepAlive until stopKeeping is called.
	keeping     errgroup.Group
	stopKeeping context.CancelFunc
	// mu serialises the uses of conn: the driver cannot run a statement on a session
	// while another one's rows are being read (it breaks the session: "invalid
	// connection", and the lock with it).
	mu sync.Mutex
	// renewed is when the last successful use of the session was sent (monotonic): the
	// server saw the session busy no earlier, so no standby takes it over before
	// renewed + LeaseTimeout.
	renewed atomic.Pointer[time.Time]
}

// leaseMargin is how long before a standby may take the lock over the holder stops
// writing (see Lock.Lease).
const leaseMargin = 5 * time.Second

// ErrLeaseExpired is returned by Lock.Lease when the lock's session was last used too
// long ago for this instance to be sure it still leads.
var ErrLeaseExpired = errors.New("the leader lock's session was not used for too long (a frozen process, a stalled host or network)")

// Lease returns an error wrapping ErrLeaseExpired once the last successful use of the
// lock's session was sent more than LeaseTimeout - leaseMargin ago: a standby may take
// the lock over at LeaseTimeout, and from then on writes of this instance must stop
// (fencing; the checkpoint is fenced by the server itself).
func (l *Lock) Lease() error {
	if t := l.renewed.Load(); t != nil {
		if since := time.Since(*t); since > LeaseTimeout-leaseMargin {
			return fmt.Errorf("%w: last renewed %s ago", ErrLeaseExpired, since.Round(time.Millisecond))
		}
	}
	return nil
}

// use runs f on the lock's session, recording a success as a renewal of the lease.
func (l *Lock) use(f func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	sent := time.Now()
	err := f()
	if err == nil {
		if prev := l.renewed.Load(); prev == nil || sent.After(*prev) {
			l.renewed.Store(&sent)
		}
	}
	return err
}

// keepAlive uses the lock's session every second while the lock is held, so that it
// never looks idle to a standby (see LeaseTimeout), whatever the holder does meanwhile
// (a long snapshot or reconciliation by the CLI).
func (l *Lock) keepAlive(stop context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = l.use(func() error {
			_, err := l.conn.ExecContext(ctx, "DO 0")
			return err
		})
		cancel()
	}
}

// ID is the state database connection id that holds the lock.
func (l *Lock) ID() int64 { return l.id }

// Held checks that the lock's connection is alive and still holds it.
func (l *Lock) Held(ctx context.Context) error {
	var ok sql.NullInt64
	err := l.use(func() error {
		return l.conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", l.name).Scan(&ok)
	})
	if err != nil {
		return fmt.Errorf("the leader lock's connection: %w", err)
	}
	if ok.Int64 != 1 {
		return fmt.Errorf("the leader lock %s is no longer held by this instance", l.name)
	}
	return nil
}

// TryLock takes the named lock without waiting; held is false when another connection
// holds it.
func TryLock(ctx context.Context, db *sql.DB, name string) (l *Lock, held bool, err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("connect to the state database: %w", err)
	}
	var got sql.NullInt64
	sent := time.Now()
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("take the lock %s: %w", name, err)
	}
	if got.Int64 != 1 {
		conn.Close()
		return nil, false, nil
	}
	l = &Lock{conn: conn, name: name}
	l.renewed.Store(&sent)
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&l.id); err != nil {
		_, _ = conn.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", name)
		conn.Close()
		return nil, false, err
	}
	stop, stopKeeping := context.WithCancel(context.Background())
	l.stopKeeping = stopKeeping
	l.keeping.Go(func() error { l.keepAlive(stop); return nil })
	return l, true, nil
}

// Release gives the lock up (within a few seconds: a server cut off does not hold it).
func (l *Lock) Release() {
	if l == nil {
		return
	}
	l.stopKeeping()
	_ = l.keeping.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = l.conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", l.name)
	l.conn.Close()
}

// LeaseTimeout is how long the leader's lock session may stay idle before a standby
// takes the lock over: the leader uses it every second (Held), so an idle session is a
// leader that froze, lost its host or was cut off, whose connection the server would keep
// (and the lock with it) until TCP keepalive gives up, hours later. A leader that cannot
// use its session for 5 s stops leading by itself, well within the lease.
const LeaseTimeout = 15 * time.Second

// errHolderNotVisible is returned by takeOverIdleLock when the lock's holder is not in
// the processlist the invsync user may see.
var errHolderNotVisible = errors.New("the leader lock's holder is not visible in the processlist")

// takeOverIdleLock kills the session holding the named lock when it has been idle for at
// least lease (see LeaseTimeout), so that the next TryLock takes the lock; it reports the
// holder's id and idle time, and whether it killed it. Both instances must run as the same
// MySQL user, or the standby needs PROCESS and CONNECTION ADMIN (SUPER on older servers).
func takeOverIdleLock(ctx context.Context, db *sql.DB, name string, lease time.Duration) (holder int64, idle time.Duration, killed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var id, secs sql.NullInt64
	var command sql.NullString
	err = db.QueryRowContext(ctx, "SELECT p.ID, p.TIME, p.COMMAND FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(?)", name).Scan(&id, &secs, &command)
	if errors.Is(err, sql.ErrNoRows) {
		var used sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&used); err != nil || !used.Valid {
			return 0, 0, false, err // released meanwhile
		}
		return used.Int64, 0, false, errHolderNotVisible
	}
	if err != nil {
		return 0, 0, false, err
	}
	holder, idle = id.Int64, time.Duration(secs.Int64)*time.Second
	if !strings.EqualFold(command.String, "Sleep") || idle < lease {
		return holder, idle, false, nil
	}
	if _, err := db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(holder, 10)); err != nil {
		return holder, idle, false, fmt.Errorf("kill the idle lock session %d: %w (fix: run every instance as the same MySQL user, or GRANT CONNECTION ADMIN)", holder, err)
	}
	return holder, idle, true, nil
}

// watchLock checks every second that the instance still holds the leader lock, and ends
// leading (lost) when it does not.
func (d *Daemon) watchLock(ctx context.Context, lock *Lock, lost context.CancelCauseFunc) {
	everyTick(ctx, time.Second, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := lock.Held(cctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			lost(fmt.Errorf("%w: %w", errLostLock, err))
			return false
		}
		return true
	})
}

// lead takes the leader lock of the config, waiting (standing by) while another
// instance holds it; it returns nil, nil when ctx ends first.
func (d *Daemon) lead(ctx context.Context, stateDB *sql.DB) (*Lock, error) {
	name := LockName(d.cfg)
	logged := false
	var lastWarn time.Time
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lock, held, err := TryLock(tctx, stateDB, name)
		cancel()
		if err == nil && !held {
			// The holder may be gone without its session knowing (frozen, powered off, cut
			// off): once that session has been idle for the lease, take the lock over.
			holder, idle, killed, terr := takeOverIdleLock(ctx, stateDB, name, LeaseTimeout)
			switch {
			case killed:
				d.log.Error("the leader's lock session has been idle for the lease (its instance froze, lost its host or was cut off): killed it to take over",
					zap.String("lock", name), zap.Int64("session", holder), zap.Duration("idle", idle), zap.Duration("lease", LeaseTimeout))
				continue
			case terr != nil && time.Since(lastWarn) > 30*time.Second:
				d.log.Warn("cannot check that the leader is alive; a leader that froze or was cut off keeps the lock until the server drops its session",
					zap.String("lock", name), zap.Int64("session", holder), zap.Error(terr))
				lastWarn = time.Now()
			}
		}
		if err == nil && held {
			if logged {
				d.log.Info("leading now: the other instance is gone", zap.String("lock", name))
			}
			return lock, nil
		}
		if err != nil {
			var me *mysql.MySQLError
			if errors.As(err, &me) && (me.Number == 1044 || me.Number == 1045) {
				return nil, fmt.Errorf("%w: the state database refused invsync: %w (fix: the user and password of state.dsn, or of the source when state.dsn is empty)", source.ErrPermanent, err)
			}
			if time.Since(lastWarn) > 30*time.Second {
				d.log.Warn("cannot take the leader lock; retrying every second", zap.String("lock", name), zap.Error(err))
				lastWarn = time.Now()
			}
		} else if !logged {
			d.log.Info("another invsync instance leads this config (it holds the lock); standing by", zap.String("lock", name))
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Leader reads what the instance that leads the config recorded about itself (known
// false: no record of the instance that holds the lock now).
func (c *Conns) Leader(ctx context.Context) (l checkpoint.Leader, known bool, err error) {
	return checkpoint.ReadLeader(ctx, c.State, c.Cfg.State.Schema, pipelineName, LockName(c.Cfg))
}

// LockHolder returns the state database connection that holds the leader lock (0 when no
// instance leads) and how long its session has been idle (-1 when it is not visible to
// the invsync user; past LeaseTimeout its instance is gone and a standby takes over).
func (c *Conns) LockHolder(ctx context.Context) (conn int64, idle time.Duration, err error) {
	var holder sql.NullInt64
	if err := c.State.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", LockName(c.Cfg)).Scan(&holder); err != nil {
		return 0, 0, err
	}
	if !holder.Valid {
		return 0, 0, nil
	}
	idle = -1
	var secs sql.NullInt64
	if err := c.State.QueryRowContext(ctx, "SELECT TIME FROM information_schema.PROCESSLIST WHERE ID = ? AND COMMAND = 'Sleep'", holder.Int64).Scan(&secs); err == nil {
		idle = time.Duration(secs.Int64) * time.Second
	} else if errors.Is(err, sql.ErrNoRows) {
		idle = 0 // busy, or not visible: assume alive
	}
	return holder.Int64, idle, nil
}
