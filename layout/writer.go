package layout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// applyScript applies a list of row changes. KEYS are the row keys, then the HoldKeys
// (orders, users, held, expiry) of each row whose change settles orders, in order; ARGV[1]
// is the tombstone TTL in milliseconds, ARGV[2] the null-marker TTL, ARGV[3] the number
// of row keys, ARGV[4] the TTL of reservation records, then per key: op ('u', 'd', 's' for settlements only, 'n'
// for a null marker, 'a' for a fill, 'r'/'R' for a replacing upsert/delete), seq (27
// digits, or ” for a write that does not come from the binlog), version, n, n
// field/value pairs, ns, and ns settlements (order, quantity, user). It returns per key
// 1 (applied), 0 (skipped) or 'E:<error>'; for a key with settlements, {that, holds
// settled, settlements that found no hold}.
//
// A settlement ends the order's hold (see holds.go) whatever the row's outcome: a row
// skipped as older (a reload wrote MySQL's newer stock already) or refused still has its
// stock taken in MySQL, so the hold must no longer count. An order already settled is a
// replay and changes nothing.
//
// Versions and seqs are compared as non-negative decimal strings, never as Lua numbers,
// so BIGINT UNSIGNED versions keep their precision.
const applyScript = `
local function cmp(a, b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  if a == b then return 0 end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then if x < y then return -1 else return 1 end end
  end
  return 0
end
-- newer reports whether binlog sequence a (27 digits) is later than b: two exact
-- numeric comparisons, cheaper in Lua than a loop over the digits.
local function newer(a, b)
  local x, y = tonumber(string.sub(a, 1, 14)), tonumber(string.sub(b, 1, 14))
  if x ~= y then return x > y end
  return tonumber(string.sub(a, 15)) > tonumber(string.sub(b, 15))
end
-- settle ends the hold of order (see holds.go) as settled with qty units: its record
-- first, then the held total and the expiry index; the user keeps the units bought.
local function settle(hk, order, qty, user, recttl)
  local orders, users, heldk, expiry = KEYS[hk], KEYS[hk+1], KEYS[hk+2], KEYS[hk+3]
  local rec = redis.call('HGET', orders, order)
  local found, bought = 0, tonumber(qty)
  if rec then
    local st, q, u, e = string.match(rec, '^(%a)|(%d+)|(.-)|(%d+)$')
    if not st then return 0, 1 end
    if st == 's' then return 0, 0 end
    q = tonumber(q)
    if u == '' then u = user end
    redis.call('HSET', orders, order, 's|' .. qty .. '|' .. u .. '|' .. e)
    local back = 0 -- units the user held before this settlement
    if st == 'h' then
      local n = tonumber(redis.call('GET', heldk) or '0') - q
      if n > 0 then redis.call('SET', heldk, n) else redis.call('DEL', heldk) end
      redis.call('ZREM', expiry, order)
      found, back = 1, q
    end
    if u ~= '' and bought ~= back then redis.call('HINCRBY', users, u, bought - back) end
  else
    redis.call('HSET', orders, order, 's|' .. qty .. '|' .. user .. '|0')
    if user ~= '' then redis.call('HINCRBY', users, user, bought) end
  end
  for _, k in ipairs({orders, users, heldk, expiry}) do redis.call('PEXPIRE', k, recttl) end
  return found, 1 - found
end
local ttl, nullttl, nrows, recttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local res = {}
-- When none of the row keys exists (new rows: a snapshot, a bulk import, a catch-up over
-- new keys), one EXISTS stands for reading each: a key is absent until a change of this
-- call writes it, and only the keys in written are read again.
local fresh = redis.call('EXISTS', unpack(KEYS, 1, nrows)) == 0
local written, none = {}, {}
local a = 5
local hk = nrows + 1
for i = 1, nrows do
  local k = KEYS[i]
  local op, s, v, mv, n = ARGV[a], ARGV[a+1], ARGV[a+2], ARGV[a+3], tonumber(ARGV[a+4])
  if mv == '' then mv = v end
  local f1 = a + 5
  a = f1 + 2 * n
  local ns = tonumber(ARGV[a])
  a = a + 1
  local settled, missing, settleErr = 0, 0, nil
  if ns > 0 then
    for j = 1, ns do
      local ok, f, m = pcall(settle, hk, ARGV[a], ARGV[a+1], ARGV[a+2], recttl)
      if ok then
        settled, missing = settled + f, missing + m
      else
        settleErr = f
      end
      a = a + 3
    end
    hk = hk + 4
  end
  if op == 's' then
    -- Settlements only (below): the row is left as it is.
    res[i] = 0
  elseif op == 'n' then
    -- A "does not exist" marker, only where no key exists at all.
    if (fresh and not written[k]) or redis.call('EXISTS', k) == 0 then
      redis.call('HSET', k, '_null', '1')
      redis.call('PEXPIRE', k, nullttl)
      res[i] = 1
    else
      res[i] = 0
    end
  else
  local cur = none
  if not fresh or written[k] then cur = redis.pcall('HMGET', k, '_s', '_v', '_null', '_deleted') end
  if cur.err then
    res[i] = 'E:' .. cur.err
  else
    local cs, cv, cn, cd = cur[1], cur[2], cur[3], cur[4]
    local apply
    if op == 'r' or op == 'R' then
      -- A replacing write (a reload while the stream is paused): whatever is there.
      apply = true
      if op == 'R' then op = 'd' end
    elseif cn or not cv then
      apply = (not cs) or (s ~= '' and newer(s, cs))
    elseif op == 'a' then
      -- A fill: only where no row, tombstone or newer write exists.
      apply = false
    elseif s ~= '' then
      -- From the binlog: ordered by _s; over a value that did not come from the binlog,
      -- by version, except that such a tombstone (a row found absent) yields to it.
      if cs then apply = newer(s, cs)
      elseif cd then apply = true
      else apply = cmp(mv, cv) >= 0 end
    elseif op == 'd' then
      -- Not from the binlog, a delete (the row was found absent): only over a live row
      -- whose version is not newer than the one the caller saw.
      apply = (not cd) and cmp(v, cv) >= 0
    else
      apply = cmp(v, cv) > 0
    end
    if apply then
      if op == 'd' then
        redis.call('DEL', k)
        if s ~= '' then redis.call('HSET', k, '_v', v, '_s', s, '_deleted', '1')
        else redis.call('HSET', k, '_v', v, '_deleted', '1') end
        redis.call('PEXPIRE', k, ttl)
      elseif s ~= '' and cs and cv and not cn and not cd then
        -- Over a live row written from the binlog: overwrite in place. The hash then
        -- holds exactly the new state unless the old one had a field the new one lacks
        -- (a column that became NULL or was dropped): then rebuild it.
        redis.call('HSET', k, '_v', v, '_s', s, unpack(ARGV, f1, f1 + 2 * n - 1))
        if redis.call('HLEN', k) ~= n + 2 then
          redis.call('DEL', k)
          redis.call('HSET', k, '_v', v, '_s', s, unpack(ARGV, f1, f1 + 2 * n - 1))
        end
      else
        -- A hash with none of the fields read above is not one invsync wrote: the key is
        -- absent (a new row) and needs no DEL.
        if cs or cv or cn or cd then redis.call('DEL', k) end
        if s ~= '' then
          if n > 0 then redis.call('HSET', k, '_v', v, '_s', s, unpack(ARGV, f1, f1 + 2 * n - 1))
          else redis.call('HSET', k, '_v', v, '_s', s) end
        else
          if n > 0 then redis.call('HSET', k, '_v', v, unpack(ARGV, f1, f1 + 2 * n - 1))
          else redis.call('HSET', k, '_v', v) end
        end
      end
      res[i] = 1
    else
      res[i] = 0
    end
  end
  end
  if fresh then written[k] = true end
  if settleErr then res[i] = 'E:settlement: ' .. tostring(settleErr)
  elseif ns > 0 then res[i] = {res[i], settled, missing} end
end
return res
`

// rowsPerCall is the most rows one EVALSHA carries: enough to amortise the call, small
// enough to keep Redis responsive to other clients.
const rowsPerCall = 64

// ErrKey is wrapped by the per-key error of a change that Redis refused (for example
// WRONGTYPE because a non-hash value sits on the key).
var ErrKey = errors.New("redis refused the write of this key")

// ErrUnavailable is wrapped by the error of a write that Redis refused because of its
// own state, not the key's: out of memory (maxmemory), a failed background save
// (MISCONF), a busy script, loading its data, a read-only replica, a cluster or master
// down, not enough replicas, an authentication or permission problem. Every write
// fails alike: callers treat it as an outage (pause and retry), never as a bad key.
var ErrUnavailable = errors.New("redis refuses writes")

// serverStates are the error prefixes of Redis replies that tell the server's state.
var serverStates = []string{"OOM", "MISCONF", "BUSY ", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
	"NOREPLICAS", "NOAUTH", "WRONGPASS", "NOPERM", "UNBLOCKED",
	"max number of clients"} // "ERR max number ...": redis.HasErrorPrefix drops "ERR "

// IsServerState reports whether err is a Redis reply that tells the server's state (see
// ErrUnavailable), or wraps ErrUnavailable.
func IsServerState(err error) bool {
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	if re := redis.Error(nil); errors.As(err, &re) && re.Error() == "BUSY" {
		return true // (BUSYKEY is the key's)
	}
	for _, p := range serverStates {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// IsWrongType reports Redis refusing an operation on a key that holds another type.
func IsWrongType(err error) bool { return redis.HasErrorPrefix(err, "WRONGTYPE") }

// unavailable wraps a server-state reply so that callers can test it with errors.Is.
func unavailable(err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Writer applies changes through the versioned script.
type Writer struct {
	rdb     redis.UniversalClient
	script  *redis.Script
	ttls    atomic.Pointer[[3]string] // tombstone, null marker, reservation records (ms)
	cluster bool
	repair  *redis.Script
	fence   atomic.Pointer[func() error]
}

// ErrFenced is wrapped by the error of a write refused because the instance may no
// longer lead (its leader lease expired: another instance may lead and write now).
var ErrFenced = errors.New("the leader lease expired: this instance may no longer lead, so it writes nothing")

// SetFence makes every write (Apply, Repair) first call f and refuse, with f's error
// wrapped in ErrFenced, when it fails. nil removes the fence.
func (w *Writer) SetFence(f func() error) {
	if f == nil {
		w.fence.Store(nil)
		return
	}
	w.fence.Store(&f)
}

// fenced returns the error of a write the fence refuses (nil when allowed).
func (w *Writer) fenced() error {
	if f := w.fence.Load(); f != nil {
		if err := (*f)(); err != nil {
			return fmt.Errorf("%w: %w", ErrFenced, err)
		}
	}
	return nil
}

// NewWriter returns a Writer. Tombstones expire after tombstoneTTL. With cluster set,
// the changes of one script call are grouped by hash slot.
func NewWriter(rdb redis.UniversalClient, tombstoneTTL time.Duration, cluster bool) *Writer {
	return NewWriterWithNullTTL(rdb, tombstoneTTL, time.Minute, cluster)
}

// NewWriterWithNullTTL is NewWriter with the lifetime of null markers (OpNull).
func NewWriterWithNullTTL(rdb redis.UniversalClient, tombstoneTTL, nullTTL time.Duration, cluster bool) *Writer {
	w := &Writer{
		rdb:     rdb,
		script:  redis.NewScript(applyScript),
		repair:  redis.NewScript(repairScript),
		cluster: cluster,
	}
	w.SetTTLs(tombstoneTTL, nullTTL)
	return w
}

// SetTTLs changes the lifetimes of the tombstones and null markers written from now on
// (a config reload).
func (w *Writer) SetTTLs(tombstoneTTL, nullTTL time.Duration) {
	rec := DefaultRecordTTL
	if t := w.ttls.Load(); t != nil {
		rec, _ = time.ParseDuration(t[2] + "ms")
	}
	w.setTTLs(tombstoneTTL, nullTTL, rec)
}

// SetRecordTTL changes how long the reservation records of a row are kept after a
// settlement (see holds.go).
func (w *Writer) SetRecordTTL(d time.Duration) {
	t := w.ttls.Load()
	tomb, _ := time.ParseDuration(t[0] + "ms")
	null, _ := time.ParseDuration(t[1] + "ms")
	w.setTTLs(tomb, null, d)
}

func (w *Writer) setTTLs(tombstoneTTL, nullTTL, recordTTL time.Duration) {
	ms := func(d time.Duration) string { return strconv.FormatInt(max(d.Milliseconds(), 1), 10) }
	w.ttls.Store(&[3]string{ms(tombstoneTTL), ms(nullTTL), ms(recordTTL)})
}

// DefaultRecordTTL is how long a row's reservation records are kept after their last
// change unless configured otherwise.
const DefaultRecordTTL = 7 * 24 * time.Hour

// settling counts the changes of idx that settle orders.
func settling(changes []Change, idx []int) int {
	n := 0
	for _, ci := range idx {
		if len(changes[ci].Settles) > 0 {
			n++
		}
	}
	return n
}

// Load loads the script into every Redis server (done again automatically on NOSCRIPT).
func (w *Writer) Load(ctx context.Context) error {
	if c, ok := w.rdb.(*redis.ClusterClient); ok {
		return c.ForEachShard(ctx, func(ctx context.Context, s *redis.Client) error {
			return w.script.Load(ctx, s).Err()
		})
	}
	return w.script.Load(ctx, w.rdb).Err()
}

// Outcome is the result of one change.
type Outcome struct {
	Result Result
	// Settled counts the holds the change's settlements ended; Unheld its settlements
	// that found no hold (released or expired first, or lost with Redis's data).
	Settled, Unheld int
	// Err is set when Result is Failed; it wraps ErrKey for a per-key refusal, and
	// ErrUnavailable when Redis refused because of its own state.
	Err error
}

// Apply writes changes with one pipeline of script calls. out must have len(changes);
// out[i] receives the outcome of changes[i]. The returned error is set when the
// pipeline as a whole failed (Redis unreachable, timeout): then every outcome is Failed.
func (w *Writer) Apply(ctx context.Context, changes []Change, out []Outcome) error {
	if len(changes) == 0 {
		return nil
	}
	if err := w.fenced(); err != nil {
		for i := range out[:len(changes)] {
			out[i] = Outcome{Result: Failed, Err: err}
		}
		return err
	}
	groups := w.group(changes)
	cmds, err := w.exec(ctx, changes, groups)
	if err == nil && hasNoScript(cmds) {
		if err = w.Load(ctx); err == nil {
			cmds, err = w.exec(ctx, changes, groups)
		}
	}
	if err != nil && cmds == nil {
		if IsServerState(err) {
			err = unavailable(err)
		}
		for i := range out[:len(changes)] {
			out[i] = Outcome{Result: Failed, Err: err}
		}
		return err
	}
	var whole error
	for g, r := range cmds {
		idx := groups[g]
		vals, cerr := r.vals, r.err
		if cerr == nil && len(vals) != len(idx) {
			cerr = fmt.Errorf("layout: script returned %d results for %d keys", len(vals), len(idx))
		}
		if cerr != nil && IsServerState(cerr) {
			cerr = unavailable(cerr)
		}
		for j, ci := range idx {
			if cerr != nil {
				out[ci] = Outcome{Result: Failed, Err: cerr}
				continue
			}
			out[ci] = decodeResult(vals[j])
		}
		if cerr != nil && !isKeyError(cerr) {
			whole = cerr
		}
	}
	return whole
}

func decodeResult(v any) Outcome {
	switch x := v.(type) {
	case int64:
		if x == 1 {
			return Outcome{Result: Applied}
		}
		return Outcome{Result: Skipped}
	case string:
		return Outcome{Result: Failed, Err: fmt.Errorf("%w: %s", ErrKey, strings.TrimPrefix(x, "E:"))}
	case []any:
		if len(x) == 3 {
			o := decodeResult(x[0])
			n1, _ := x[1].(int64)
			n2, _ := x[2].(int64)
			o.Settled, o.Unheld = int(n1), int(n2)
			return o
		}
	}
	return Outcome{Result: Failed, Err: fmt.Errorf("layout: unexpected script result %T", v)}
}

// isKeyError reports whether a whole-call error is about the data (a script error
// caused by the key's content), not about reaching Redis or Redis's state.
func isKeyError(err error) bool {
	var re redis.Error
	if errors.As(err, &re) {
		return !IsServerState(err) && !isNoScript(err)
	}
	return false
}

func hasNoScript(res []callResult) bool {
	for _, r := range res {
		if isNoScript(r.err) {
			return true
		}
	}
	return false
}

// group splits the changes into script calls: at most rowsPerCall each, and in cluster
// mode only keys of one hash slot per call.
func (w *Writer) group(changes []Change) [][]int {
	var groups [][]int
	if !w.cluster {
		for i := 0; i < len(changes); i += rowsPerCall {
			end := min(i+rowsPerCall, len(changes))
			g := make([]int, 0, end-i)
			for j := i; j < end; j++ {
				g = append(g, j)
			}
			groups = append(groups, g)
		}
		return groups
	}
	open := map[uint16]int{}
	for i, c := range changes {
		slot := Slot(c.Key)
		gi, ok := open[slot]
		if !ok || len(groups[gi]) >= rowsPerCall {
			groups = append(groups, make([]int, 0, 8))
			gi = len(groups) - 1
			open[slot] = gi
		}
		groups[gi] = append(groups[gi], i)
	}
	return groups
}

// argsPool holds the argument lists of script calls (about 17 per row), reused once a
// call's pipeline has run: they were a fifth of the daemon's garbage in a bulk write.
var argsPool = sync.Pool{New: func() any { return new([]any) }}

func (w *Writer) exec(ctx context.Context, changes []Change, groups [][]int) ([]callResult, error) {
	pipe := w.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(groups))
	bufs := make([]*[]any, 0, len(groups))
	defer func() {
		for _, b := range bufs {
			clear(*b) // drop the pointers into changes
			*b = (*b)[:0]
			argsPool.Put(b)
		}
	}()
	// The call's arguments go to go-redis as one list per script call ("EVALSHA", sha,
	// numkeys, KEYS, ARGV), written as they are, and the rows' strings as pointers (it
	// writes a *string as the string): a string in an interface is a 16-byte allocation,
	// about ten per row. They point into changes, which outlive the pipeline, into seqs
	// (all the call's seqs in one string) and into holds.
	var seqBuf []byte
	for i := range changes {
		if !changes[i].Seq.IsZero() {
			seqBuf = AppendSeq(seqBuf, changes[i].Seq)
		}
	}
	allSeqs := string(seqBuf)
	seqs := make([]string, len(changes))
	for i, off := 0, 0; i < len(changes); i++ {
		if !changes[i].Seq.IsZero() {
			seqs[i] = allSeqs[off : off+seqWidth]
			off += seqWidth
		}
	}
	nholds := 0
	for _, idx := range groups {
		nholds += settling(changes, idx)
	}
	holds := make([]HoldKeys, 0, nholds) // never grown: args point into it
	sha := w.script.Hash()
	ttls := w.ttls.Load()
	for g, idx := range groups {
		nkeys := len(idx) + 4*settling(changes, idx)
		n := 3 + nkeys + 4
		for _, ci := range idx {
			n += 6 + 2*len(changes[ci].Fields) + 3*len(changes[ci].Settles)
		}
		buf := argsPool.Get().(*[]any)
		bufs = append(bufs, buf)
		args := slices.Grow((*buf)[:0], n)
		args = append(args, "evalsha", &sha, nkeys)
		for _, ci := range idx {
			args = append(args, &changes[ci].Key)
		}
		for _, ci := range idx {
			if c := &changes[ci]; len(c.Settles) > 0 {
				holds = append(holds, HoldKeysOf(c.Key))
				hk := &holds[len(holds)-1]
				args = append(args, &hk.Orders, &hk.Users, &hk.Held, &hk.Expiry)
			}
		}
		args = append(args, &ttls[0], &ttls[1], len(idx), &ttls[2])
		for _, ci := range idx {
			c := &changes[ci]
			// Constant strings in an interface cost no allocation.
			var op any = "u"
			if c.Op == OpDelete {
				op = "d"
				if c.Replace {
					op = "R"
				}
			} else if c.Op == OpNull {
				op = "n"
			} else if c.Op == OpSettle {
				op = "s"
			} else if c.Replace {
				op = "r"
			} else if c.IfAbsent && c.Seq.IsZero() {
				op = "a"
			}
			nf := len(c.Fields)
			if c.Op != OpUpsert {
				nf = 0
			}
			args = append(args, op, &seqs[ci], &c.Version, &c.MaxVersion, nf)
			for f := range c.Fields[:nf] {
				args = append(args, &c.Fields[f].Name, &c.Fields[f].Value)
			}
			args = append(args, len(c.Settles))
			for k := range c.Settles {
				st := &c.Settles[k]
				args = append(args, &st.Order, st.Qty, &st.User)
			}
		}
		*buf = args
		cmd := redis.NewCmd(ctx, args...)
		cmd.SetFirstKeyPos(3)
		_ = pipe.Process(ctx, cmd)
		cmds[g] = cmd
	}
	_, err := pipe.Exec(ctx)
	var reply redis.Error
	if err != nil && !errors.As(err, &reply) {
		// A transport error fails every command of the pipeline.
		allFailed := true
		for _, c := range cmds {
			if c.Err() == nil {
				allFailed = false
			}
		}
		if allFailed {
			return nil, err
		}
	}
	// The results only: the commands hold argument lists that go back to argsPool.
	res := make([]callResult, len(cmds))
	for g, c := range cmds {
		res[g].vals, res[g].err = c.Slice()
	}
	return res, nil
}

// callResult is what one script call returned.
type callResult struct {
	vals []any
	err  error
}

func isNoScript(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }
