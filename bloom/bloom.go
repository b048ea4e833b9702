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
	"encoding/binary"
	"math"
	"math/bits"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
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

// saturated is the share of bits set beyond which a filter holds more items than it was
// sized for (a filter at its capacity has about half its bits set).
const saturated = 0.55

// fill is the share of f's bits that are set.
func (f *Filter) fill() float64 { return float64(f.f.BitSet().Count()) / float64(f.M()) }

// EstimatedFalsePositiveRate is the rate expected with n items: (1 - e^(-kn/m))^k.
func (f *Filter) EstimatedFalsePositiveRate(n uint) float64 {
	return FalsePositiveRate(f.M(), f.K(), n)
}

// FalsePositiveRate is the rate expected of a filter of m bits and k hashes holding n
// items.
func FalsePositiveRate(m, k, n uint) float64 {
	if m == 0 {
		return 1
	}
	return math.Pow(1-math.Exp(-float64(k)*float64(n)/float64(m)), float64(k))
}

// Capacity is how many items a filter of m bits holds at the false-positive rate fp (the
// inverse of bloom/v3's sizing).
func Capacity(m uint, fp float64) uint {
	return uint(float64(m) * math.Ln2 * math.Ln2 / -math.Log(fp))
}

// addNew adds item to f and reports whether f lacked it (one hash, no allocation).
func (f *Filter) addNew(item string) bool { return !f.f.TestOrAddString(item) }

// appendPositions reports whether item may be in f and, when not, appends its k
// positions to dst (an item already in, the usual case of an update, costs one hash and
// allocates nothing).
func (f *Filter) appendPositions(dst []uint64, item string) (bool, []uint64) {
	if f.f.TestString(item) {
		return true, dst
	}
	return false, append(dst, f.Positions(item)...)
}

// addPositions sets the k positions of one item and reports whether f lacked any of them.
func (f *Filter) addPositions(pos []uint64) bool {
	bs, added := f.f.BitSet(), false
	for _, p := range pos {
		if !bs.Test(uint(p)) {
			bs.Set(uint(p))
			added = true
		}
	}
	return added
}

// Bitmap returns the filter as a Redis bitmap of (m+7)/8 bytes: bit i of the filter is
// bit i of the string as GETBIT numbers it (the most significant bit of byte 0 is bit 0).
func (f *Filter) Bitmap() []byte {
	return f.appendBitmap(nil, 0, (f.M()+7)/8)
}

// appendBitmap appends bytes [from, to) of the Redis bitmap to dst. Byte j of the bitmap
// is byte j%8 of word j/8 with its bits reversed (GETBIT numbers from the most
// significant bit).
func (f *Filter) appendBitmap(dst []byte, from, to uint) []byte {
	words := f.f.BitSet().Words()
	var buf [8]byte
	for b := from; b < to; {
		w := b / 8
		var x uint64
		if w < uint(len(words)) {
			x = bits.ReverseBytes64(bits.Reverse64(words[w])) // each byte's bits reversed
		}
		binary.LittleEndian.PutUint64(buf[:], x)
		end := min(to, (w+1)*8)
		dst = append(dst, buf[b%8:b%8+(end-b)]...)
		b = end
	}
	return dst
}

// empty returns an empty filter of m bits and k hashes.
func empty(m, k uint) *Filter { return &Filter{f: bloomv3.New(m, k)} }

// setBitmap ORs bytes of a Redis bitmap, starting at byte from, into f.
func (f *Filter) setBitmap(from uint, data []byte) {
	words := f.f.BitSet().Words()
	m := f.M()
	for j := 0; j < len(data); {
		at := from + uint(j)
		w := at / 8
		if w >= uint(len(words)) {
			break
		}
		if at%8 == 0 && j+8 <= len(data) {
			if x := binary.LittleEndian.Uint64(data[j:]); x != 0 {
				words[w] |= bits.ReverseBytes64(bits.Reverse64(x))
			}
			j += 8
			continue
		}
		if b := data[j]; b != 0 && at*8 < m {
			words[w] |= uint64(bits.Reverse8(b)) << (8 * (at % 8))
		}
		j++
	}
	if r := m % 64; r != 0 && len(words) > 0 {
		words[len(words)-1] &= 1<<r - 1 // bits past m are not part of the filter
	}
}

// FromBitmap is the filter of m bits and k hashes whose Redis bitmap is data (see
// Bitmap).
func FromBitmap(data []byte, m, k uint) *Filter {
	f := empty(m, k)
	f.setBitmap(0, data[:min(uint(len(data)), (m+7)/8)])
	return f
}
