// Package bloom keeps a Bloom filter of the primary keys of a mirrored table, in process
// (github.com/bits-and-blooms/bloom/v3) and mirrored to a Redis bitmap, so that every
// application server can test membership with k GETBITs in one round trip. A Bloom
// filter cannot forget: it is rebuilt from a full scan and swapped in with RENAME, so a
// reader never sees a half-built filter.
//
// The bit positions are bloom/v3's: Locations(item, k) modulo m. The parameters are
// stored next to the bitmap (<key>:meta) so that other clients can compute them.
package bloom

import (
	"context"
	"fmt"
	"strconv"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
	"github.com/redis/go-redis/v9"
)

// HashName identifies the position scheme in the meta key.
const HashName = "bits-and-blooms/bloom/v3 Locations mod m"

// Filter is the in-process filter of one table.
type Filter struct {
	f *bloomv3.BloomFilter
}

// New sizes a filter for expected items at the false-positive rate fp.
func New(expected uint, fp float64) *Filter {
	return &Filter{f: bloomv3.NewWithEstimates(expected, fp)}
}

// M is the number of bits, K the number of positions per item.
func (f *Filter) M() uint { return f.f.Cap() }

// K is the number of positions per item.
func (f *Filter) K() uint { return f.f.K() }

// Positions returns the bit positions of item (the bits Add sets).
func (f *Filter) Positions(item string) []uint64 { return Positions(item, f.M(), f.K()) }

// Positions returns the bit positions of item in a filter of m bits and k hashes.
func Positions(item string, m, k uint) []uint64 {
	locs := bloomv3.Locations([]byte(item), k)
	for i := range locs {
		locs[i] %= uint64(m)
	}
	return locs
}

// Add adds item and returns its positions (for the Redis mirror).
func (f *Filter) Add(item string) []uint64 {
	f.f.AddString(item)
	return f.Positions(item)
}

// Test reports whether item may be in the set (false: certainly not).
func (f *Filter) Test(item string) bool { return f.f.TestString(item) }

// Count estimates the number of items added.
func (f *Filter) Count() uint32 { return f.f.ApproximatedSize() }

// EstimatedFalsePositiveRate is the rate expected with n items.
func (f *Filter) EstimatedFalsePositiveRate(n uint) float64 {
	return bloomv3.EstimateFalsePositiveRate(f.M(), f.K(), n)
}

// Bitmap returns the filter as a Redis bitmap: bit i of the filter is bit i of the
// string as GETBIT numbers it (the most significant bit of byte 0 is bit 0).
func (f *Filter) Bitmap() []byte {
	m := f.M()
	out := make([]byte, (m+7)/8)
	b := f.f.BitSet()
	for i, ok := b.NextSet(0); ok && i < m; i, ok = b.NextSet(i + 1) {
		out[i/8] |= 0x80 >> (i % 8)
	}
	return out
}

// Mirror is the Redis copy of one table's filter.
type Mirror struct {
	rdb redis.UniversalClient
	key string
}

// NewMirror returns the mirror at key (its parameters at key+":meta").
func NewMirror(rdb redis.UniversalClient, key string) *Mirror { return &Mirror{rdb: rdb, key: key} }

// Key is the bitmap's key.
func (m *Mirror) Key() string { return m.key }

// SetBits sets the given positions (of items added since the bitmap was written).
func (m *Mirror) SetBits(ctx context.Context, positions []uint64) error {
	if len(positions) == 0 {
		return nil
	}
	pipe := m.rdb.Pipeline()
	for _, p := range positions {
		pipe.SetBit(ctx, m.key, int64(p), 1)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Replace writes f as the new bitmap under a temporary key, then renames it over the
// live one (atomic: a reader sees the old filter or the new one), and updates the meta.
func (m *Mirror) Replace(ctx context.Context, f *Filter) error {
	tmp := m.key + ":building"
	if err := m.rdb.Set(ctx, tmp, f.Bitmap(), 0).Err(); err != nil {
		return fmt.Errorf("write the bloom bitmap: %w", err)
	}
	if err := m.rdb.HSet(ctx, m.key+":meta", "m", f.M(), "k", f.K(), "hash", HashName).Err(); err != nil {
		return fmt.Errorf("write the bloom meta: %w", err)
	}
	if err := m.rdb.Rename(ctx, tmp, m.key).Err(); err != nil {
		return fmt.Errorf("swap in the bloom bitmap: %w", err)
	}
	return nil
}

// Params reads m and k from the meta key.
func (m *Mirror) Params(ctx context.Context) (mBits, k uint, err error) {
	v, err := m.rdb.HMGet(ctx, m.key+":meta", "m", "k").Result()
	if err != nil {
		return 0, 0, err
	}
	if len(v) != 2 || v[0] == nil || v[1] == nil {
		return 0, 0, fmt.Errorf("bloom meta %s:meta is missing", m.key)
	}
	mm, err1 := strconv.ParseUint(v[0].(string), 10, 64)
	kk, err2 := strconv.ParseUint(v[1].(string), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bloom meta %s:meta is malformed", m.key)
	}
	return uint(mm), uint(kk), nil
}

// MayContain tests item against the Redis bitmap with k GETBITs in one round trip.
func (m *Mirror) MayContain(ctx context.Context, item string, mBits, k uint) (bool, error) {
	pipe := m.rdb.Pipeline()
	pos := Positions(item, mBits, k)
	cmds := make([]*redis.IntCmd, len(pos))
	for i, p := range pos {
		cmds[i] = pipe.GetBit(ctx, m.key, int64(p))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return false, err
	}
	for _, c := range cmds {
		if c.Val() == 0 {
			return false, nil
		}
	}
	return true, nil
}
