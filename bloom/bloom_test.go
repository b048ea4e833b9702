package bloom_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"testing"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/internal/testenv"
)

// Issue 5, acceptance 5: the filter's memory is within 10% of bloom/v3's estimate for
// the configured size, and the measured false-positive rate within 1.5x of the
// configured rate.
func TestSizingAndFalsePositiveRate(t *testing.T) {
	const n, fp = 200_000, 0.001
	m, k := bloomv3.EstimateParameters(n, fp)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f := bloom.New(n, fp)
	runtime.ReadMemStats(&after)
	used := float64(after.HeapAlloc - before.HeapAlloc)
	want := float64(m) / 8
	if used < want*0.9 || used > want*1.1 {
		t.Fatalf("filter uses %.0f bytes, estimate %.0f (m=%d bits)", used, want, m)
	}
	if f.M() != m || f.K() != k {
		t.Fatalf("m, k = %d, %d; want %d, %d", f.M(), f.K(), m, k)
	}
	for i := 0; i < n; i++ {
		f.Add("sku-" + strconv.Itoa(i))
	}
	for i := 0; i < n; i++ {
		if !f.Test("sku-" + strconv.Itoa(i)) {
			t.Fatalf("false negative for sku-%d", i)
		}
	}
	false_ := 0
	for i := n; i < 2*n; i++ {
		if f.Test("sku-" + strconv.Itoa(i)) {
			false_++
		}
	}
	rate := float64(false_) / n
	t.Logf("m=%d bits (%.0f KiB, measured %.0f KiB), k=%d, false positives %d of %d = %.5f (configured %.3f)",
		m, want/1024, used/1024, k, false_, n, rate, fp)
	if rate > fp*1.5 {
		t.Fatalf("false-positive rate %.5f above 1.5x the configured %.3f", rate, fp)
	}
}

// The Redis bitmap answers exactly like the in-process filter, reads back into the same
// filter, and Replace swaps a new bitmap in with RENAME.
func TestMirrorMatchesTheFilter(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	pfx := testenv.Prefix(t, rdb)
	f := bloom.New(5000, 0.01)
	for i := 0; i < 5000; i += 2 {
		f.Add(strconv.Itoa(i))
	}
	mir := bloom.NewMirror(rdb, pfx+"bloom")
	testenv.Must(t, mir.Replace(ctx, f), "replace")
	mBits, k, err := mir.Params(ctx)
	if err != nil || mBits != f.M() || k != f.K() {
		t.Fatalf("params %d %d %v", mBits, k, err)
	}
	r := bloom.NewReader(rdb, pfx+"bloom")
	for i := 0; i < 5000; i++ {
		got, err := r.MayContain(ctx, strconv.Itoa(i))
		testenv.Must(t, err, "MayContain")
		if got != f.Test(strconv.Itoa(i)) {
			t.Fatalf("item %d: Redis says %v, the filter %v", i, got, !got)
		}
	}
	// Items added later are mirrored bit by bit.
	testenv.Must(t, mir.SetBits(ctx, f.Add("new-sku")), "setbits")
	if ok, _ := r.MayContain(ctx, "new-sku"); !ok {
		t.Fatal("a mirrored addition is not found")
	}
	if n := len(rdb.Keys(ctx, "*"+pfx+"bloom}:building").Val()); n != 0 {
		t.Fatal("the temporary bitmap was left behind")
	}
	// Read back: the same filter, bit for bit.
	g, err := mir.Load(ctx)
	testenv.Must(t, err, "load")
	if g.M() != f.M() || g.K() != f.K() || string(g.Bitmap()) != string(f.Bitmap()) {
		t.Fatal("the filter loaded from Redis differs from the one written")
	}
	for i := 0; i < 5000; i++ {
		if g.Test(strconv.Itoa(i)) != f.Test(strconv.Itoa(i)) {
			t.Fatalf("item %d answered differently after the round trip", i)
		}
	}
	// Without its meta, the bitmap is not trusted: everything may be present.
	testenv.Must(t, mir.Invalidate(ctx), "invalidate")
	if _, err := mir.Load(ctx); !errors.Is(err, bloom.ErrNoFilter) {
		t.Fatalf("load without meta: %v", err)
	}
	if ok, err := r.MayContain(ctx, "1"); !ok || err != nil {
		t.Fatalf("without meta MayContain = %v, %v; want true", ok, err)
	}
}

// FromBitmap and Bitmap are inverse for sizes that are not whole bytes or words.
func TestBitmapRoundTrip(t *testing.T) {
	for _, n := range []uint{1, 7, 63, 100, 1000} {
		f := bloom.New(n, 0.05)
		for i := uint(0); i < n; i += 3 {
			f.Add(strconv.Itoa(int(i)))
		}
		g := bloom.FromBitmap(f.Bitmap(), f.M(), f.K())
		if string(g.Bitmap()) != string(f.Bitmap()) || uint(len(f.Bitmap())) != (f.M()+7)/8 {
			t.Fatalf("n=%d: round trip differs", n)
		}
		if g.Count() != f.Count() {
			t.Fatalf("n=%d: counts %d vs %d", n, g.Count(), f.Count())
		}
	}
}

// A filter larger than one transfer chunk (1 MiB) goes to Redis and back unchanged.
func TestLargeFilterRoundTripThroughRedis(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	key := testenv.Prefix(t, rdb) + "bloom"
	t.Cleanup(func() { rdb.Del(context.Background(), key, key+":meta") })
	f := bloom.New(1_500_000, 0.001) // 2.6 MiB
	for i := 0; i < 200_000; i++ {
		f.Add("k" + strconv.Itoa(i*7))
	}
	mir := bloom.NewMirror(rdb, key)
	testenv.Must(t, mir.Replace(ctx, f), "replace")
	if n := rdb.StrLen(ctx, key).Val(); n != int64((f.M()+7)/8) {
		t.Fatalf("bitmap length %d, want %d", n, (f.M()+7)/8)
	}
	g, err := mir.Load(ctx)
	testenv.Must(t, err, "load")
	if string(g.Bitmap()) != string(f.Bitmap()) {
		t.Fatal("the filter changed on its way through Redis")
	}
}
