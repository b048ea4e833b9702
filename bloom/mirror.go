package bloom

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

// ErrNoFilter means Redis holds no complete filter at the key: the bitmap or its meta is
// missing, or they disagree (a rebuild is needed).
var ErrNoFilter = errors.New("no complete bloom filter in Redis")

// Mirror is the Redis copy of one table's filter: the bitmap at Key and its parameters
// in the hash Key+":meta" (fields m, k, hash).
type Mirror struct {
	rdb     redis.UniversalClient
	key     string
	meta    string
	tmp     string
	cluster bool
	// fence, when set, is asked before a bitmap is replaced or invalidated (see
	// Keeper.SetFence).
	fence atomic.Pointer[func() error]
}

// ErrFenced wraps the error of a replace or invalidate refused by the fence.
var ErrFenced = errors.New("bloom: not written: this instance may no longer lead")

func (m *Mirror) fenced() error {
	if f := m.fence.Load(); f != nil {
		if err := (*f)(); err != nil {
			return fmt.Errorf("%w: %w", ErrFenced, err)
		}
	}
	return nil
}

// NewMirror returns the mirror at key.
func NewMirror(rdb redis.UniversalClient, key string) *Mirror {
	_, cluster := rdb.(*redis.ClusterClient)
	// The bitmap is built under tmp and renamed over key; in a cluster both must hash to
	// the same slot, which the hash tag {key} gives when key has no tag of its own.
	tmp := "{" + key + "}:building"
	if layout.Slot(tmp) != layout.Slot(key) {
		tmp = key + ":building"
	}
	return &Mirror{rdb: rdb, key: key, meta: key + ":meta", tmp: tmp, cluster: cluster}
}

// Key is the bitmap's key.
func (m *Mirror) Key() string { return m.key }

// MetaKey is the key of the parameters.
func (m *Mirror) MetaKey() string { return m.meta }

// SetBits sets the given positions with one BITFIELD command (bits of items added since
// the bitmap was written).
func (m *Mirror) SetBits(ctx context.Context, positions []uint64) error {
	if len(positions) == 0 {
		return nil
	}
	return m.rdb.Do(ctx, m.setBitsArgs(positions)...).Err()
}

func (m *Mirror) setBitsArgs(positions []uint64) []any {
	args := make([]any, 0, 2+4*len(positions))
	args = append(args, "BITFIELD", m.key)
	for i := range positions {
		// A pointer: an offset in an interface would be an allocation per bit.
		args = append(args, "SET", "u1", &positions[i], 1)
	}
	return args
}

// ioChunk is how many bytes of a bitmap one command reads or writes: a filter of 10M keys
// is 17 MiB, moved without a copy of that size in memory or one long command in Redis.
const ioChunk = 1 << 20

// Replace writes f as the new bitmap under a temporary key, then renames it over the
// live one and writes the meta. A reader sees the old filter or the new one; while the
// two keys disagree (in a cluster, between RENAME and the meta write) the bitmap's
// length tells (see Reader), as filters of different parameters have different lengths.
func (m *Mirror) Replace(ctx context.Context, f *Filter) error {
	if err := m.fenced(); err != nil {
		return err
	}
	n := (f.M() + 7) / 8
	if err := m.rdb.Del(ctx, m.tmp).Err(); err != nil {
		return fmt.Errorf("write the bloom bitmap %s: %w", m.tmp, err)
	}
	buf := make([]byte, 0, min(n, ioChunk))
	for off := uint(0); off < n; off += ioChunk {
		buf = f.appendBitmap(buf[:0], off, min(off+ioChunk, n))
		if err := m.rdb.Append(ctx, m.tmp, string(buf)).Err(); err != nil {
			return fmt.Errorf("write the bloom bitmap %s: %w", m.tmp, err)
		}
	}
	meta := []any{"m", f.M(), "k", f.K(), "hash", HashName}
	if m.cluster {
		if err := m.rdb.Rename(ctx, m.tmp, m.key).Err(); err != nil {
			return fmt.Errorf("swap in the bloom bitmap %s: %w", m.key, err)
		}
		if err := m.rdb.HSet(ctx, m.meta, meta...).Err(); err != nil {
			return fmt.Errorf("write the bloom meta %s: %w", m.meta, err)
		}
		return nil
	}
	_, err := m.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Rename(ctx, m.tmp, m.key)
		p.HSet(ctx, m.meta, meta...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("swap in the bloom bitmap %s: %w", m.key, err)
	}
	return nil
}

// Invalidate deletes the meta, so that readers stop trusting the bitmap (they treat
// every key as possibly present) until Replace writes a complete one.
func (m *Mirror) Invalidate(ctx context.Context) error {
	if err := m.fenced(); err != nil {
		return err
	}
	return m.rdb.Del(ctx, m.meta).Err()
}

// Params reads m and k from the meta key (ErrNoFilter when it is missing or malformed).
func (m *Mirror) Params(ctx context.Context) (mBits, k uint, err error) {
	v, err := m.rdb.HMGet(ctx, m.meta, "m", "k").Result()
	if err != nil {
		return 0, 0, err
	}
	mBits, k, ok := parseParams(v)
	if !ok {
		return 0, 0, fmt.Errorf("%w: %s is missing or malformed", ErrNoFilter, m.meta)
	}
	return mBits, k, nil
}

func parseParams(v []any) (mBits, k uint, ok bool) {
	if len(v) != 2 {
		return 0, 0, false
	}
	ms, _ := v[0].(string)
	ks, _ := v[1].(string)
	mm, err1 := strconv.ParseUint(ms, 10, 64)
	kk, err2 := strconv.ParseUint(ks, 10, 64)
	if err1 != nil || err2 != nil || mm == 0 || kk == 0 {
		return 0, 0, false
	}
	return uint(mm), uint(kk), true
}

// Load reads the filter back from Redis (ErrNoFilter when there is no complete one), in
// chunks; when a rebuild was swapped in meanwhile it reads again.
func (m *Mirror) Load(ctx context.Context) (*Filter, error) {
	for try := 0; ; try++ {
		mBits, k, err := m.Params(ctx)
		if err != nil {
			return nil, err
		}
		n := (mBits + 7) / 8
		f := empty(mBits, k)
		healthy, err := m.Healthy(ctx, f)
		if err != nil {
			if layout.IsWrongType(err) {
				return nil, fmt.Errorf("%w: %s holds another type", ErrNoFilter, m.key)
			}
			return nil, err
		}
		if !healthy {
			return nil, fmt.Errorf("%w: %s is missing or its length does not match %d bits", ErrNoFilter, m.key, mBits)
		}
		for off := uint(0); off < n; off += ioChunk {
			b, err := m.rdb.GetRange(ctx, m.key, int64(off), int64(min(off+ioChunk, n))-1).Bytes()
			if err != nil {
				return nil, err
			}
			f.setBitmap(off, b)
		}
		if ok, err := m.Healthy(ctx, f); err != nil || ok || try == 2 {
			if err == nil && !ok {
				err = fmt.Errorf("%w: %s kept changing while it was read", ErrNoFilter, m.key)
			}
			if err != nil {
				return nil, err
			}
			return f, nil
		}
	}
}

// Healthy reports whether the meta and the bitmap in Redis agree with f's parameters.
func (m *Mirror) Healthy(ctx context.Context, f *Filter) (bool, error) {
	p := m.rdb.Pipeline()
	meta := p.HMGet(ctx, m.meta, "m", "k")
	n := p.StrLen(ctx, m.key)
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	mBits, k, ok := parseParams(meta.Val())
	return ok && mBits == f.M() && k == f.K() && uint(n.Val()) == (f.M()+7)/8, nil
}

// Reader tests membership against a mirror, the way application servers do: it caches
// the parameters and checks, in the same round trip as the k GETBITs, that the meta
// still holds them and that the bitmap has their length before and after the GETBITs,
// so that a rebuild swapped in meanwhile cannot produce a false "absent".
type Reader struct {
	m      *Mirror
	params atomic.Pointer[[2]uint]
}

// NewReader returns a Reader of the bitmap at key.
func NewReader(rdb redis.UniversalClient, key string) *Reader {
	return &Reader{m: NewMirror(rdb, key)}
}

// readerTries bounds the retries when a rebuild is swapped in during a check.
const readerTries = 3

// MayContain reports false only when item is certainly not in the filter. With no
// complete filter in Redis (none built yet, a rebuild after a loss), it reports true:
// the caller then reads on, as without a filter.
func (r *Reader) MayContain(ctx context.Context, item string) (bool, error) {
	for try := 0; try < readerTries; try++ {
		p := r.params.Load()
		if p == nil {
			mBits, k, err := r.m.Params(ctx)
			if errors.Is(err, ErrNoFilter) {
				return true, nil
			}
			if err != nil {
				return true, err
			}
			p = &[2]uint{mBits, k}
			r.params.Store(p)
		}
		mBits, k := p[0], p[1]
		pos := Positions(item, mBits, k)
		pipe := r.m.rdb.Pipeline()
		meta := pipe.HMGet(ctx, r.m.meta, "m", "k")
		before := pipe.StrLen(ctx, r.m.key)
		bitCmds := make([]*redis.IntCmd, len(pos))
		for i, b := range pos {
			bitCmds[i] = pipe.GetBit(ctx, r.m.key, int64(b))
		}
		after := pipe.StrLen(ctx, r.m.key)
		if _, err := pipe.Exec(ctx); err != nil {
			return true, err
		}
		gm, gk, ok := parseParams(meta.Val())
		if !ok {
			r.params.Store(nil)
			return true, nil // no complete filter now
		}
		want := int64((mBits + 7) / 8)
		if gm != mBits || gk != k || before.Val() != want || after.Val() != want {
			r.params.Store(nil) // parameters changed or a swap ran: read them again
			continue
		}
		for _, c := range bitCmds {
			if c.Val() == 0 {
				return false, nil
			}
		}
		return true, nil
	}
	return true, nil
}

// Add sets the bits of items in the Redis bitmap with the parameters of its meta (for a
// process other than the daemon that writes rows, such as a repair); with no complete
// filter in Redis there is nothing to add to.
func (r *Reader) Add(ctx context.Context, items []string) error {
	mBits, k, err := r.m.Params(ctx)
	if errors.Is(err, ErrNoFilter) {
		return nil
	}
	if err != nil {
		return err
	}
	var pos []uint64
	for _, it := range items {
		pos = append(pos, Positions(it, mBits, k)...)
	}
	return r.m.SetBits(ctx, pos)
}
