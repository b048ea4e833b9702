package layout

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// repairScript writes a row state over a key only if the key is still exactly as its
// caller observed it (compare-and-set): so a repair can never undo a change written
// after it looked. KEYS[1] is the key; ARGV: tombstone TTL (ms), the observed type
// ('none', 'hash' or 'other'), the observed _s and _v (” when absent), then op ('u' or
// 'd' for a tombstone, or '-' to only delete a value of another type), the new _s, _v,
// n, and n field/value pairs. It returns 1 when written, 0 when the key changed.
const repairScript = `
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
local want = ARGV[2]
if want == 'none' then
  if t ~= 'none' then return 0 end
elseif want == 'other' then
  if t == 'hash' or t == 'none' then return 0 end
else
  if t ~= 'hash' then return 0 end
  local cur = redis.call('HMGET', k, '_s', '_v')
  if (cur[1] or '') ~= ARGV[3] or (cur[2] or '') ~= ARGV[4] then return 0 end
end
local op, s, v, n = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
redis.call('DEL', k)
if op == '-' then return 1 end
if op == 'd' then
  redis.call('HSET', k, '_v', v, '_s', s, '_deleted', '1')
  redis.call('PEXPIRE', k, ARGV[1])
  return 1
end
if n > 0 then redis.call('HSET', k, '_v', v, '_s', s, unpack(ARGV, 9, 8 + 2 * n))
else redis.call('HSET', k, '_v', v, '_s', s) end
return 1
`

// Observed is the state of a key as a repair saw it.
type Observed struct {
	// Type is "none" (no key), "hash", or "other" (a value of another type).
	Type string
	// Seq and Version are the hash's _s and _v ("" when absent).
	Seq, Version string
}

// Repair is one compare-and-set write: Change (an upsert, a delete that leaves a
// tombstone, or, with Op zero, only the removal of a value of another type) is written
// with _s = At only if the key is still as Observed.
type Repair struct {
	Observed Observed
	Change   Change
	// At is the binlog position as of which Change holds (read before the row was):
	// a later binlog change of the key replaces the repair, an earlier one is skipped.
	At Seq
}

// Repair applies repairs; out[i] reports whether repairs[i] was written (false: the key
// changed since it was observed).
func (w *Writer) Repair(ctx context.Context, repairs []Repair) ([]bool, error) {
	out := make([]bool, len(repairs))
	if err := w.fenced(); err != nil {
		return out, err
	}
	for attempt := 0; attempt < 2; attempt++ {
		pipe := w.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(repairs))
		for i, r := range repairs {
			op := "u"
			switch {
			case r.Change.Op == OpDelete:
				op = "d"
			case r.Change.Op == 0:
				op = "-"
			}
			args := []any{w.ttls.Load()[0], r.Observed.Type, r.Observed.Seq, r.Observed.Version, op, string(AppendSeq(nil, r.At)), r.Change.Version, len(r.Change.Fields)}
			if op == "u" {
				for _, f := range r.Change.Fields {
					args = append(args, f.Name, f.Value)
				}
			}
			cmds[i] = w.repair.EvalSha(ctx, pipe, []string{r.Change.Key}, args...)
		}
		_, _ = pipe.Exec(ctx)
		noScript := false
		for i, c := range cmds {
			v, err := c.Int()
			if err != nil {
				if isNoScript(err) {
					noScript = true
					break
				}
				return out, fmt.Errorf("layout: repair %s: %w", repairs[i].Change.Key, err)
			}
			out[i] = v == 1
		}
		if !noScript {
			return out, nil
		}
		var err error
		if c, ok := w.rdb.(*redis.ClusterClient); ok {
			err = c.ForEachShard(ctx, func(ctx context.Context, s *redis.Client) error { return w.repair.Load(ctx, s).Err() })
		} else {
			err = w.repair.Load(ctx, w.rdb).Err()
		}
		if err != nil {
			return out, err
		}
	}
	return out, fmt.Errorf("layout: repair script could not be loaded")
}
