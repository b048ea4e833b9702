package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
)

// Redis that loses its recent writes (issue 11, part 2). A Redis restarted from its RDB or
// AOF, or a failover to an asynchronous replica, keeps the data-loss marker but loses
// writes that invsync already acknowledged and checkpointed. So Redis itself records how
// far it got: every master holds an "applied" marker, the position up to which every
// change had been written when the marker was written (the watermark, written before
// each checkpoint). Redis persists and replicates its writes in order, so whatever state
// it comes back in holds every change up to the marker it holds.
//
// invsync remembers, per master, the server's run_id and the marker it last wrote.
// Another run_id (a restart, a failover) or another marker (an older state) means Redis
// went back: the stream is started again from the marker Redis holds (replays are
// harmless; the Bloom bitmaps are written again from memory). A master whose marker is
// gone lost everything: every table is loaded again. The marker write itself is a
// compare-and-set on both, so a marker can never be written over a state that went back.

// appliedMarkerPrefix names the markers: <prefix><state.schema>, with a hash tag per
// master in a cluster.
const appliedMarkerPrefix = "invsync:applied:"

// markerScript reads (ARGV[1] = "") or compare-and-sets a marker: it returns the server's
// run_id, the marker's value ("" when absent) and 1 when the marker holds ARGV[3]
// afterwards. It writes only when the run_id is ARGV[1] ("*": any) and the value is
// ARGV[2] ("*": any) or ARGV[4] (a write whose reply was lost; "" when none: an absent
// marker is then a master that lost it, never a write that landed); a marker that holds
// ARGV[3] already (a retried call whose first run landed) counts as written.
var markerScript = redis.NewScript(`
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local cur = redis.call('GET', KEYS[1]) or ''
if ARGV[1] == '' then return {rid, cur, 0} end
if cur == ARGV[3] then return {rid, cur, 1} end
if ARGV[1] ~= '*' and rid ~= ARGV[1] then return {rid, cur, 0} end
if ARGV[2] ~= '*' and cur ~= ARGV[2] and (ARGV[4] == '' or cur ~= ARGV[4]) then return {rid, cur, 0} end
redis.call('SET', KEYS[1], ARGV[3])
return {rid, cur, 1}
`)

// errRedisWentBack is the cause of a session's end when Redis went back to an older state.
type errRedisWentBack struct {
	key, why string
	// to is the position Redis holds every change up to (nil: the marker is gone, the
	// master lost everything).
	to *source.Position
}

func (e *errRedisWentBack) Error() string {
	if e.to == nil {
		return fmt.Sprintf("redis lost invsync's data (%s: %s)", e.key, e.why)
	}
	return fmt.Sprintf("redis went back to an older state (%s: %s): it holds every change up to %s", e.key, e.why, e.to)
}

// redisHistory watches the applied markers of every master.
type redisHistory struct {
	rdb  redis.UniversalClient
	keys []string
	mu   sync.Mutex
	rid  map[string]string // run_id last seen per marker key
	last map[string]string // marker value last written or read per key
	// maybe holds, per key, a value whose write failed without an answer: it may have
	// landed, so it is accepted as well as last.
	maybe map[string]string
	// fence, when set, is asked before markers are written (see Lock.Lease).
	fence func() error
}

// appliedMarkerKeys returns one marker key per master: in a cluster, each with a hash tag
// of a slot that master serves.
func appliedMarkerKeys(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config) ([]string, error) {
	base := appliedMarkerPrefix + cfg.State.Schema
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return []string{base}, nil
	}
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("read the cluster's slots: %w", err)
	}
	byMaster := map[string][]redis.ClusterSlot{}
	var masters []string
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		m := s.Nodes[0].Addr
		if _, seen := byMaster[m]; !seen {
			masters = append(masters, m)
		}
		byMaster[m] = append(byMaster[m], s)
	}
	var keys []string
	for _, m := range masters {
		for i := 0; i < 1_000_000; i++ {
			k := base + ":{m" + strconv.Itoa(i) + "}"
			slot := int(layout.Slot(k))
			found := false
			for _, r := range byMaster[m] {
				if slot >= r.Start && slot <= r.End {
					found = true
					break
				}
			}
			if found {
				keys = append(keys, k)
				break
			}
		}
	}
	return keys, nil
}

func encodeMarker(p source.Position) string {
	return strconv.FormatUint(uint64(p.Epoch), 10) + "\t" + p.File + "\t" + strconv.FormatUint(uint64(p.Pos), 10) + "\t" + p.GTID
}

func decodeMarker(s string) (source.Position, bool) {
	parts := strings.SplitN(s, "\t", 4)
	if len(parts) != 4 {
		return source.Position{}, false
	}
	e, err1 := strconv.ParseUint(parts[0], 10, 32)
	pos, err2 := strconv.ParseUint(parts[2], 10, 32)
	if err1 != nil || err2 != nil {
		return source.Position{}, false
	}
	return source.Position{Epoch: uint32(e), File: parts[1], Pos: uint32(pos), GTID: parts[3]}, true
}

func newRedisHistory(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config) (*redisHistory, error) {
	keys, err := appliedMarkerKeys(ctx, rdb, cfg)
	if err != nil {
		return nil, err
	}
	return &redisHistory{rdb: rdb, keys: keys, rid: map[string]string{}, last: map[string]string{}, maybe: map[string]string{}}, nil
}

type markerState struct{ rid, value string }

func (h *redisHistory) read(ctx context.Context) (map[string]markerState, error) {
	out := make(map[string]markerState, len(h.keys))
	for _, k := range h.keys {
		v, err := markerScript.Run(ctx, h.rdb, []string{k}, "", "", "").Slice()
		if err != nil {
			return nil, fmt.Errorf("read the applied marker %s: %w", k, err)
		}
		out[k] = markerState{rid: fmt.Sprint(v[0]), value: fmt.Sprint(v[1])}
	}
	return out, nil
}

// start reads the markers against the checkpoint cp (there always is one: a first start
// loads every table and writes it first) and remembers them. It returns the position to
// stream from when Redis holds less than cp (nil when it holds all of it), and whether a
// master lost everything (its marker is gone while others, or the data-loss marker, are
// there).
func (h *redisHistory) start(ctx context.Context, cp source.Position, dataMarker bool) (rewind *source.Position, lost bool, err error) {
	st, err := h.read(ctx)
	if err != nil {
		return nil, false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	missing := 0
	for _, k := range h.keys {
		s := st[k]
		h.rid[k], h.last[k] = s.rid, s.value
		if s.value == "" {
			missing++
			continue
		}
		p, ok := decodeMarker(s.value)
		if !ok {
			// A snapshot's token: a load that did not finish (see snapshotMarkers).
			lost = true
			continue
		}
		if p.Epoch < cp.Epoch {
			// Redis holds a state from before the source's history was replaced: its
			// positions cannot be streamed again; reload.
			lost = true
			continue
		}
		if p.Before(cp) && (rewind == nil || p.Before(*rewind)) {
			rewind = &p
		}
	}
	// Every marker missing with the data still there: written by an invsync from before
	// the markers. Some missing: those masters lost their data.
	if missing > 0 && (missing < len(h.keys) || !dataMarker) {
		lost = true
	}
	if lost {
		rewind = nil
	}
	return rewind, lost, nil
}

// advance writes pos (every change up to it is in Redis) to every master's marker,
// unless a master went back since it was last seen: then it returns *errRedisWentBack.
func (h *redisHistory) advance(ctx context.Context, pos source.Position) error {
	if h.fence != nil {
		if err := h.fence(); err != nil {
			return fmt.Errorf("%w: %w", layout.ErrFenced, err)
		}
	}
	val := encodeMarker(pos)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.keys {
		rid, last := h.rid[k], h.last[k]
		if rid == "" {
			rid = "*"
		}
		v, err := markerScript.Run(ctx, h.rdb, []string{k}, rid, last, val, h.maybe[k]).Slice()
		if err != nil {
			h.maybe[k] = val
			return fmt.Errorf("write the applied marker %s: %w", k, err)
		}
		gotRID, cur := fmt.Sprint(v[0]), fmt.Sprint(v[1])
		if v[2] != int64(1) {
			return wentBack(k, h.rid[k], gotRID, last, cur)
		}
		h.rid[k], h.last[k] = gotRID, val
		delete(h.maybe, k)
	}
	return nil
}

// check compares every master's run_id and marker with what was last seen.
func (h *redisHistory) check(ctx context.Context) error {
	h.mu.Lock() // held across the read: an advance meanwhile is not a change
	defer h.mu.Unlock()
	st, err := h.read(ctx)
	if err != nil {
		return err
	}
	for _, k := range h.keys {
		s := st[k]
		rid, last := h.rid[k], h.last[k]
		if m, ok := h.maybe[k]; ok && s.value == m && s.rid == rid {
			// The write whose answer was lost landed.
			h.last[k] = m
			delete(h.maybe, k)
			continue
		}
		if (rid != "" && s.rid != rid) || s.value != last {
			return wentBack(k, rid, s.rid, last, s.value)
		}
	}
	return nil
}

func wentBack(key, rid, gotRID, last, cur string) error {
	why := "its marker changed from " + strconv.Quote(last) + " to " + strconv.Quote(cur)
	if rid != "" && rid != "*" && gotRID != rid {
		why = "another server (run_id " + gotRID + ", was " + rid + "): a restart or a failover"
	}
	e := &errRedisWentBack{key: key, why: why}
	if p, ok := decodeMarker(cur); ok {
		e.to = &p
	}
	return e
}

// adopt takes the markers a snapshot wrote (pos, over its tokens, on the servers it saw)
// as the state last seen, without reading them again: a loss right after that write is
// then a change, never the state to keep.
func (h *redisHistory) adopt(m *snapshotMarkers, pos source.Position) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := encodeMarker(pos)
	for _, k := range m.keys {
		rid := m.rid[k]
		if rid == "*" {
			rid = ""
		}
		h.rid[k], h.last[k] = rid, v
	}
	clear(h.maybe)
}

// resync forgets what was seen and reads the markers again (after a rewind).
func (h *redisHistory) resync(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, err := h.read(ctx)
	if err != nil {
		return err
	}
	for _, k := range h.keys {
		h.rid[k], h.last[k] = st[k].rid, st[k].value
	}
	clear(h.maybe)
	return nil
}

// snapshotMarkers hold a snapshot's claim on every master's applied marker: before the
// load, each marker is set to a token of its own ("loading", then random; a marker that
// holds one names no position, so a snapshot interrupted there leaves Redis counted as
// lost). The markers are written to the snapshot's position only if every master still
// holds its token and answers with the same run_id: a master that lost its data while the
// load ran (a FLUSHALL, a restart without persistence) lost rows the load had written,
// and a failover may have too.
type snapshotMarkers struct {
	keys  []string
	rid   map[string]string
	token string
}

// errLostDuringLoad tells that a master lost its data, or was replaced, while a snapshot
// loaded the tables: the load must run again.
type errLostDuringLoad struct{ key, why string }

func (e *errLostDuringLoad) Error() string {
	return "redis lost rows the snapshot had written (" + e.key + ": " + e.why + ")"
}

func readSnapshotMarkers(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config) (*snapshotMarkers, error) {
	h, err := newRedisHistory(ctx, rdb, cfg)
	if err != nil {
		return nil, err
	}
	st, err := h.read(ctx)
	if err != nil {
		return nil, err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	m := &snapshotMarkers{keys: h.keys, rid: map[string]string{}, token: "loading\t" + hex.EncodeToString(nonce[:])}
	for _, k := range m.keys {
		rid := st[k].rid
		if rid == "" {
			rid = "*"
		}
		v, err := markerScript.Run(ctx, rdb, []string{k}, rid, "*", m.token, "").Slice()
		if err != nil {
			return nil, fmt.Errorf("write the applied marker %s: %w", k, err)
		}
		if v[2] != int64(1) {
			return nil, fmt.Errorf("another Redis server answers for %s (run_id %v, was %s) as the snapshot starts; starting again", k, v[0], rid)
		}
		m.rid[k] = rid
	}
	return m, nil
}

// write sets every master's marker to pos (every row up to pos is in Redis), or returns
// *errLostDuringLoad when a master no longer holds the token or another server answers.
func (m *snapshotMarkers) write(ctx context.Context, rdb redis.UniversalClient, pos source.Position) error {
	for _, k := range m.keys {
		v, err := markerScript.Run(ctx, rdb, []string{k}, m.rid[k], m.token, encodeMarker(pos), "").Slice()
		if err != nil {
			return fmt.Errorf("write the applied marker %s: %w", k, err)
		}
		if v[2] != int64(1) {
			why := "its marker changed from the snapshot's token to " + strconv.Quote(fmt.Sprint(v[1]))
			if rid := fmt.Sprint(v[0]); rid != m.rid[k] {
				why = "another server (run_id " + rid + ", was " + m.rid[k] + "): a restart or a failover"
			}
			return &errLostDuringLoad{key: k, why: why}
		}
	}
	return nil
}

// watchRedisHistory checks every second that no master went back (see check), and ends
// the session with the cause when one did.
func (d *Daemon) watchRedisHistory(ctx context.Context, h *redisHistory, end context.CancelCauseFunc) {
	everyTick(ctx, dataLossCheck, func() bool {
		var back *errRedisWentBack
		if errors.As(h.check(ctx), &back) {
			end(back)
			return false
		}
		return true
	})
}
