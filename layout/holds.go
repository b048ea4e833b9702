package layout

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Reservations (holds). A buyer's reservation pre-deducts stock in Redis before MySQL
// knows about the order: it is a hold (order id, quantity, user, expiry) kept beside the
// row, in the row's hash slot, so that one script sees the row and its holds in Redis
// Cluster too. The row's stock field is MySQL's committed stock, written only by the
// mirror; the holds are Redis's own:
//
//	available = stock − held, held = Σ quantity of the active holds
//
// The keys of a row key K ("prefix{pk}"):
//
//	K:o  hash   order id → "state|qty|user|expiry ms"; state h (held), r (released),
//	            x (expired), s (settled). Records of orders stay until the row's records
//	            expire (RecordTTL after the last change), so that an order id reserving,
//	            releasing or settling again changes nothing.
//	K:u  hash   user → units held or settled (the per-user limit); a released or expired
//	            hold gives them back.
//	K:n  string held (Σ quantity of the state-h orders).
//	K:x  zset   order id → expiry (ms), of the state-h orders (the expiry sweep).
//
// Only a settlement read from the binlog (the order's row in the settlement table, in
// the transaction that took its stock in MySQL) turns a hold into state s, in the same
// script call as the row's new stock (see Writer.Apply and Change.Settles), so that
// available does not move at settlement.

// HoldKeys are the keys of a row's reservations.
type HoldKeys struct {
	Orders, Users, Held, Expiry string
}

// HoldKeysOf returns the reservation keys of the row key key.
func HoldKeysOf(key string) HoldKeys {
	return HoldKeys{Orders: key + ":o", Users: key + ":u", Held: key + ":n", Expiry: key + ":x"}
}

// IsHoldKey reports whether key is one of a row's reservation keys (not a row key).
func IsHoldKey(key string) bool {
	n := len(key)
	if n < 3 || key[n-3] != '}' || key[n-2] != ':' {
		return false
	}
	switch key[n-1] {
	case 'o', 'u', 'n', 'x':
		return true
	}
	return false
}

// holdsLib is the Lua shared by the reservation scripts: KEYS[1] is the row, KEYS[2..5]
// its HoldKeys (orders, users, held, expiry).
const holdsLib = `
local row, orders, users, heldk, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function parse(rec)
  local st, q, u, e = string.match(rec, '^(%a)|(%d+)|(.-)|(%d+)$')
  return st, tonumber(q), u, e
end
-- endHold ends the active hold of order (rec its record) with state st (r or x): its
-- record first, then the held total, the expiry index and the user's units.
local function endHold(order, rec, st)
  local _, q, u, e = parse(rec)
  redis.call('HSET', orders, order, st .. '|' .. q .. '|' .. u .. '|' .. e)
  local n = tonumber(redis.call('GET', heldk) or '0') - q
  if n > 0 then redis.call('SET', heldk, n, 'KEEPTTL') else redis.call('DEL', heldk) end
  redis.call('ZREM', expiry, order)
  if u ~= '' then
    if redis.call('HINCRBY', users, u, -q) <= 0 then redis.call('HDEL', users, u) end
  end
  return q
end
-- clock is the time in ms: ARGV's when the caller gives one (tests), else Redis's own,
-- one clock for every client and the daemon.
local function clock(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- sweep expires the holds past now (at most max); it returns how many.
local function sweep(now, max)
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, max)
  for _, order in ipairs(due) do
    local rec = redis.call('HGET', orders, order)
    local st, q = parse(rec or '')
    if st == 'h' and q then endHold(order, rec, 'x') else redis.call('ZREM', expiry, order) end
  end
  return #due
end
-- keep gives the four keys one lifetime: ttl ms, or (ttl nil) the orders record's, so
-- that they expire together, never one without the others.
local function keep(ttl)
  if not ttl then
    ttl = redis.call('PTTL', orders)
    if ttl <= 0 then return end
  end
  for _, k in ipairs({orders, users, heldk, expiry}) do
    if redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, ttl) end
  end
end
local function available(stockField)
  local r = redis.call('HMGET', row, stockField, '_deleted', '_null')
  if r[2] or r[3] or not r[1] then return nil end
  local stock = tonumber(r[1])
  if not stock then return nil end
  return stock - tonumber(redis.call('GET', heldk) or '0')
end
`

// reserveScript reserves a sequence of orders on one row in one call, each as if it were
// alone and the calls ran in that order (TestReservationBatchEqualsOneAtATime), except
// that the call first ends up to 100 expired holds per reservation it carries:
// ARGV stock field, limit (0: none), now ms, hold TTL ms, record TTL ms, then per order
// its id, user and qty. It returns per order {outcome, available after, hold expiry ms}
// in one flat array. The clock, the sweep and the row are read, and the keys' lifetime
// refreshed, once per call; each hold writes its record, expiry, user units and the held
// total itself, so that a call failing halfway leaves them consistent.
const reserveScript = holdsLib + `
local field, limit, now, holdttl, recttl = ARGV[1], tonumber(ARGV[2]), clock(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = (#ARGV - 5) / 3
-- The row's expired holds end first: up to 100 per reservation of the call, at least as
-- many as its reservations would end made one call each.
sweep(now, 100 * n)
local a = available(field)
local out, held, refresh = {}, false, false
for i = 1, n do
  local order, user, qty = ARGV[3*i+3], ARGV[3*i+4], tonumber(ARGV[3*i+5])
  local rec = redis.call('HGET', orders, order)
  local res, e = 'held', 0
  if rec then
    local st, _, _, x = parse(rec)
    if not st then res = 'bad_record' elseif st ~= 'h' then res = 'done:' .. st end
    e = x or 0
  elseif not a then
    res = 'unknown_row'
  elseif a < qty then
    res = 'sold_out'
  elseif limit > 0 and user ~= '' and tonumber(redis.call('HGET', users, user) or '0') + qty > limit then
    res = 'limit'
  else
    e = now + holdttl
    redis.call('HSET', orders, order, 'h|' .. qty .. '|' .. user .. '|' .. e)
    redis.call('ZADD', expiry, e, order)
    -- A key that starts from nothing (the row's first hold, or its first since every
    -- hold ended) gets the row's lifetime below. The held total is written hold by hold:
    -- a call that fails halfway leaves it equal to the holds it wrote.
    if user ~= '' and redis.call('HINCRBY', users, user, qty) == qty then refresh = true end
    if redis.call('INCRBY', heldk, qty) == qty then refresh = true end
    a, held = a - qty, true
  end
  out[#out+1], out[#out+2], out[#out+3] = res, a or 0, e
end
-- Refresh the keys' lifetime (together) only when less than half of it is left or a key
-- starts from nothing: most calls on a busy row cost no PEXPIRE at all.
if held and (refresh or redis.call('PTTL', orders) < recttl / 2) then keep(recttl) end
return out
`

// releaseScript: ARGV stock field, order, now ms. It returns {outcome, available after}.
const releaseScript = holdsLib + `
local field, order, now = ARGV[1], ARGV[2], clock(ARGV[3])
sweep(now, 100)
local rec = redis.call('HGET', orders, order)
if not rec then return {'unknown', available(field) or 0} end
local st = string.sub(rec, 1, 1)
if st == 'h' then
  endHold(order, rec, 'r')
  keep(nil)
  return {'released', available(field) or 0}
end
return {'done:' .. st, available(field) or 0}
`

// availableScript: ARGV stock field, now ms. It returns {available or -1 when the row
// is absent, held}.
const availableScript = holdsLib + `
if sweep(clock(ARGV[2]), 100) > 0 then keep(nil) end
local a = available(ARGV[1])
if not a then a = -1 end
return {a, tonumber(redis.call('GET', heldk) or '0')}
`

// sweepScript: ARGV now ms, max. It returns the number of holds expired.
const sweepScript = holdsLib + `
local n = sweep(clock(ARGV[1]), tonumber(ARGV[2]))
if n > 0 then keep(nil) end
return n
`

// repairScript recomputes a row's held total and expiry index from its order records
// (reconcile --repair). It returns the held total before and after.
const repairHoldsScript = holdsLib + `
local before = tonumber(redis.call('GET', heldk) or '0')
local recs = redis.call('HGETALL', orders)
local sum = 0
redis.call('DEL', expiry)
for i = 1, #recs, 2 do
  local st, q, _, e = parse(recs[i+1])
  if st == 'h' then
    sum = sum + q
    redis.call('ZADD', expiry, e, recs[i])
  end
end
if sum > 0 then redis.call('SET', heldk, sum) else redis.call('DEL', heldk) end
local ttl = redis.call('PTTL', orders)
if ttl > 0 then keep(ttl) end
return {before, sum}
`

// Outcome of a reservation or release.
type HoldOutcome string

const (
	// Held: the reservation holds its units (also when the order had reserved before).
	Held HoldOutcome = "held"
	// SoldOut: fewer units are available than asked.
	SoldOut HoldOutcome = "sold_out"
	// OverLimit: the user's per-SKU limit would be exceeded.
	OverLimit HoldOutcome = "limit"
	// UnknownRow: Redis has no live row for the key (not mirrored yet, or deleted).
	UnknownRow HoldOutcome = "unknown_row"
	// Released: the hold was given back.
	Released HoldOutcome = "released"
	// AlreadyReleased, AlreadyExpired, AlreadySettled: the order's hold ended before (a
	// repeated call changes nothing).
	AlreadyReleased HoldOutcome = "already_released"
	AlreadyExpired  HoldOutcome = "already_expired"
	AlreadySettled  HoldOutcome = "already_settled"
	// UnknownOrder: no hold of that order id is recorded for the row.
	UnknownOrder HoldOutcome = "unknown_order"
)

func doneOutcome(s string) HoldOutcome {
	switch s {
	case "done:r":
		return AlreadyReleased
	case "done:x":
		return AlreadyExpired
	case "done:s":
		return AlreadySettled
	case "unknown":
		return UnknownOrder
	}
	return HoldOutcome(s)
}

// Holds runs the reservation scripts on one Redis (or cluster).
type Holds struct {
	rdb                          redis.UniversalClient
	reserve, release, avail, swp *redis.Script
	repair                       *redis.Script
	// mu guards flights, the reservation calls in flight, and waiting, the ones that
	// wait to go in the next.
	mu      sync.Mutex
	flights int
	waiting []*reserveCall
	// HoldTTL is how long a hold lasts unless released or settled; RecordTTL how long
	// a row's order records are kept after its last reservation.
	HoldTTL, RecordTTL time.Duration
	// now, when set (tests), replaces Redis's clock (TIME), which every script uses
	// otherwise: one clock for every application server and the daemon.
	now func() time.Time
}

// NewHolds returns the reservation scripts over rdb.
func NewHolds(rdb redis.UniversalClient, holdTTL, recordTTL time.Duration) *Holds {
	return &Holds{rdb: rdb, reserve: redis.NewScript(reserveScript), release: redis.NewScript(releaseScript),
		avail: redis.NewScript(availableScript), swp: redis.NewScript(sweepScript), repair: redis.NewScript(repairHoldsScript),
		HoldTTL: holdTTL, RecordTTL: recordTTL}
}

// SetClock makes the scripts take the time from now instead of Redis's TIME (tests).
func (h *Holds) SetClock(now func() time.Time) { h.now = now }

// clock is the now argument of a script: "" for Redis's own clock.
func (h *Holds) clock() string {
	if h.now == nil {
		return ""
	}
	return strconv.FormatInt(h.now().UnixMilli(), 10)
}

func holdKeys(key string) []string {
	k := HoldKeysOf(key)
	return []string{key, k.Orders, k.Users, k.Held, k.Expiry}
}

// Reservation is the answer to Reserve.
type Reservation struct {
	Outcome HoldOutcome
	// Available is what is left after the reservation (before it when refused).
	Available int64
	// Expires is when the hold ends unless released or settled (zero when refused).
	Expires time.Time
}

// MaxHoldQty is the most units one reservation holds (Lua keeps integers exact up to
// 2^53 and prints them as integers below 1e14).
const MaxHoldQty = 1_000_000_000

// ErrBadOrder is returned for an order or user id that cannot be recorded.
var ErrBadOrder = errors.New("layout: an order id must be non-empty and neither it nor a user id may contain '|'")

// Reserve holds qty units of the row key for order (idempotent by order id: an order
// that reserved before gets its first answer's hold back, and nothing changes). limit > 0
// caps the units one user holds or bought of the row. stockField is the row's stock.
//
// Reservations are sent as they come while fewer than maxReserveFlights calls are in
// flight; the ones that arrive meanwhile wait and then go together, in one pipeline with
// one script call per row (at most maxReserveBatch reservations each) in their order of
// arrival. Each gets the answer it would have got alone (reserveScript); under load a
// flash sale costs Redis and the client one round trip per batch instead of one per
// buyer. A caller whose ctx ends while it waits returns ctx.Err(); its reservation may
// still be made (call Reserve again with the same order id to learn its answer).
func (h *Holds) Reserve(ctx context.Context, key, stockField, order, user string, qty, limit int64) (Reservation, error) {
	if order == "" || strings.ContainsRune(order, '|') || strings.ContainsRune(user, '|') {
		return Reservation{}, ErrBadOrder
	}
	if qty <= 0 || qty > MaxHoldQty {
		return Reservation{}, fmt.Errorf("layout: reserve %d units: the quantity must be between 1 and %d", qty, MaxHoldQty)
	}
	if _, inner, ok := InnerOf(key); !ok || inner == "" {
		return Reservation{}, fmt.Errorf("layout: reserve on %q: not a row key with a primary key", key)
	}
	c := &reserveCall{ctx: ctx, key: key, field: stockField, limit: limit, order: order, user: user, qty: qty, done: make(chan struct{})}
	h.mu.Lock()
	if h.flights >= maxReserveFlights {
		h.waiting = append(h.waiting, c)
		h.mu.Unlock()
		select {
		case <-c.done:
			return c.res, c.err
		case <-ctx.Done():
			return Reservation{}, ctx.Err()
		}
	}
	h.flights++
	h.mu.Unlock()
	defer h.landed()
	h.runReserves(ctx, []*reserveCall{c})
	return c.res, c.err
}

const (
	// maxReserveFlights is how many reservation calls (or pipelines) are in flight at
	// most before the next ones wait to go together.
	maxReserveFlights = 2
	// maxReserveBatch is the most reservations one script call carries, and
	// maxReservePipeline the most one pipeline carries.
	maxReserveBatch    = 256
	maxReservePipeline = 4096
)

// reserveCall is one Reserve waiting for its answer.
type reserveCall struct {
	ctx         context.Context
	key, field  string
	limit       int64
	order, user string
	qty         int64
	res         Reservation
	err         error
	answered    bool // res and err are set, done closed
	done        chan struct{}
}

// landed is called when a flight ends: the reservations that waited go in the next one,
// from a goroutine of its own, until none waits.
func (h *Holds) landed() {
	h.mu.Lock()
	if len(h.waiting) == 0 {
		h.flights--
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	go func() {
		for {
			h.mu.Lock()
			if len(h.waiting) == 0 {
				h.flights--
				h.mu.Unlock()
				return
			}
			n := min(len(h.waiting), maxReservePipeline)
			batch := h.waiting[:n:n]
			if h.waiting = h.waiting[n:]; len(h.waiting) == 0 {
				h.waiting = nil // the next ones start a new array: this one keeps no call alive
			}
			h.mu.Unlock()
			live := batch[:0:0]
			for _, c := range batch {
				if err := c.ctx.Err(); err != nil {
					c.err = err
					close(c.done)
				} else {
					live = append(live, c)
				}
			}
			if len(live) > 0 {
				// The flight outlives any one caller that gives up (go-redis's read
				// and write timeouts bound it).
				h.flight(context.WithoutCancel(live[0].ctx), live)
			}
		}
	}()
}

// flight is runReserves for the calls that waited: a panic (in a hook, say) answers
// them with an error instead of ending the process and leaving them waiting.
func (h *Holds) flight(ctx context.Context, calls []*reserveCall) {
	defer func() {
		if p := recover(); p != nil {
			for _, c := range calls {
				if !c.answered {
					c.err = fmt.Errorf("layout: reserve: panic: %v", p)
					close(c.done)
				}
			}
		}
	}()
	h.runReserves(ctx, calls)
}

// runReserves makes the reservations of calls: one script call per row (and stock field
// and limit, which a reload can change between two calls) in their order, all in one
// pipeline; and answers each (c.res, c.err, c.done closed).
func (h *Holds) runReserves(ctx context.Context, calls []*reserveCall) {
	type group struct {
		calls []*reserveCall
		cmd   *redis.Cmd
	}
	var groups []*group
	if len(calls) == 1 {
		groups = []*group{{calls: calls}}
	} else {
		// A row's calls stay in their order: a reservation whose stock field or limit
		// differs from the one before it of its row (a reload changed them) starts a
		// group after the others, never joins an earlier one.
		last := map[string]*group{}
		for _, c := range calls {
			g := last[c.key]
			if g == nil || len(g.calls) == maxReserveBatch || g.calls[0].field != c.field || g.calls[0].limit != c.limit {
				g = &group{}
				last[c.key] = g
				groups = append(groups, g)
			}
			g.calls = append(g.calls, c)
		}
	}
	args := func(cs []*reserveCall) []any {
		a := make([]any, 0, 5+3*len(cs))
		a = append(a, cs[0].field, cs[0].limit, h.clock(), h.HoldTTL.Milliseconds(), h.RecordTTL.Milliseconds())
		for _, c := range cs {
			a = append(a, c.order, c.user, c.qty)
		}
		return a
	}
	if len(groups) == 1 {
		g := groups[0]
		g.cmd = h.reserve.Run(ctx, h.rdb, holdKeys(g.calls[0].key), args(g.calls)...)
	} else {
		pipe := h.rdb.Pipeline()
		for _, g := range groups {
			g.cmd = h.reserve.EvalSha(ctx, pipe, holdKeys(g.calls[0].key), args(g.calls)...)
		}
		_, _ = pipe.Exec(ctx)
		for _, g := range groups {
			if redis.HasErrorPrefix(g.cmd.Err(), "NOSCRIPT") {
				// Redis lost its script cache (a restart): EVAL loads it again.
				g.cmd = h.reserve.Run(ctx, h.rdb, holdKeys(g.calls[0].key), args(g.calls)...)
			}
		}
	}
	for _, g := range groups {
		res, err := g.cmd.Slice()
		if err == nil && len(res) != 3*len(g.calls) {
			err = fmt.Errorf("layout: reserve: %d answers to %d reservations", len(res)/3, len(g.calls))
		}
		for i, c := range g.calls {
			var out string
			if err == nil {
				out, _ = res[3*i].(string)
			}
			switch {
			case err != nil:
				c.err = err
			case out == "bad_record":
				c.err = fmt.Errorf("layout: reserve order %q on %s: its record is not one invsync wrote (fix: look at it with HGET %s %q, remove it with HDEL, then run invsync reconcile --repair)",
					c.order, c.key, HoldKeysOf(c.key).Orders, c.order)
			default:
				c.res = Reservation{Outcome: doneOutcome(out), Available: toInt(res[3*i+1])}
				if e := toInt(res[3*i+2]); e > 0 {
					c.res.Expires = time.UnixMilli(e)
				}
			}
			c.answered = true
			if c.done != nil {
				close(c.done)
			}
		}
	}
}

// Release gives the hold of order on the row key back (idempotent).
func (h *Holds) Release(ctx context.Context, key, stockField, order string) (HoldOutcome, int64, error) {
	res, err := h.release.Run(ctx, h.rdb, holdKeys(key), stockField, order, h.clock()).Slice()
	if err != nil {
		return "", 0, err
	}
	return doneOutcome(res[0].(string)), res[1].(int64), nil
}

// Available returns the units of the row key that can still be reserved and the units
// held; ok is false when Redis holds no live row for it.
func (h *Holds) Available(ctx context.Context, key, stockField string) (available, held int64, ok bool, err error) {
	res, err := h.avail.Run(ctx, h.rdb, holdKeys(key), stockField, h.clock()).Int64Slice()
	if err != nil {
		return 0, 0, false, err
	}
	return res[0], res[1], res[0] >= 0, nil
}

// Sweep expires the holds of the row key past their expiry (at most max) and returns how
// many it expired.
func (h *Holds) Sweep(ctx context.Context, key string, max int) (int64, error) {
	return h.swp.Run(ctx, h.rdb, holdKeys(key), h.clock(), max).Int64()
}

// RepairTotal sets the row key's held total and expiry index from its order records; it
// returns the held total before and after.
func (h *Holds) RepairTotal(ctx context.Context, key string) (before, after int64, err error) {
	res, err := h.repair.Run(ctx, h.rdb, holdKeys(key)).Int64Slice()
	if err != nil {
		return 0, 0, err
	}
	return res[0], res[1], nil
}

// Held reads the row key's recorded held total.
func (h *Holds) Held(ctx context.Context, key string) (int64, error) {
	n, err := h.rdb.Get(ctx, HoldKeysOf(key).Held).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return n, err
}

// Hold is one recorded order of a row.
type Hold struct {
	Order, User string
	Qty         int64
	// State is "held", "released", "expired" or "settled".
	State   string
	Expires time.Time
}

// ListHolds returns the order records of the row key.
func (h *Holds) ListHolds(ctx context.Context, key string) ([]Hold, error) {
	m, err := h.rdb.HGetAll(ctx, HoldKeysOf(key).Orders).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Hold, 0, len(m))
	for order, rec := range m {
		hd, ok := parseHold(order, rec)
		if ok {
			out = append(out, hd)
		}
	}
	return out, nil
}

// holdStates names the states of an order record.
var holdStates = map[string]string{"h": "held", "r": "released", "x": "expired", "s": "settled"}

// Record returns the record of one order of the row key; ok is false when there is none.
func (h *Holds) Record(ctx context.Context, key, order string) (hd Hold, ok bool, err error) {
	rec, err := h.rdb.HGet(ctx, HoldKeysOf(key).Orders, order).Result()
	if errors.Is(err, redis.Nil) {
		return Hold{}, false, nil
	}
	if err != nil {
		return Hold{}, false, err
	}
	hd, ok = parseHold(order, rec)
	return hd, ok, nil
}

func parseHold(order, rec string) (Hold, bool) {
	p := strings.Split(rec, "|")
	if len(p) != 4 {
		return Hold{}, false
	}
	q, err1 := strconv.ParseInt(p[1], 10, 64)
	e, err2 := strconv.ParseInt(p[3], 10, 64)
	if err1 != nil || err2 != nil {
		return Hold{}, false
	}
	return Hold{Order: order, User: p[2], Qty: q, State: holdStates[p[0]], Expires: time.UnixMilli(e)}, true
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}
