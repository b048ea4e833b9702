//go:build w3hist

// Command w3hist draws the latency histogram of workload W3 (BenchmarkW3LiveLag): one
// panel per rate, the share of sampled commits by commit-to-visible latency (ms, log
// scale buckets), from the CSV the benchmark writes (rate,latency_us).
//
//	go run -tags w3hist ./internal/tools/w3hist -in /tmp/invsync-w3-latency.csv -out w3-latency.png
//
// (The build tag keeps gonum/plot out of the builds and vet runs of the test suite.)
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func main() {
	in := flag.String("in", os.TempDir()+"/invsync-w3-latency.csv", "the latencies BenchmarkW3LiveLag wrote")
	out := flag.String("out", "w3-latency.png", "the PNG to write")
	title := flag.String("title", "", "a line under each panel's title (date, machine)")
	flag.Parse()
	if err := run(*in, *out, *title); err != nil {
		fmt.Fprintln(os.Stderr, "w3hist:", err)
		os.Exit(1)
	}
}

func run(in, out, note string) error {
	byRate, err := read(in)
	if err != nil {
		return err
	}
	rates := make([]int, 0, len(byRate))
	for r := range byRate {
		rates = append(rates, r)
	}
	slices.Sort(rates)
	if len(rates) == 0 {
		return fmt.Errorf("%s holds no latency", in)
	}
	const w, h = 6 * vg.Inch, 3 * vg.Inch
	img := vgimg.New(w, h*vg.Length(len(rates)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(rates), Cols: 1}
	for i, rate := range rates {
		p, err := panel(rate, byRate[rate], note)
		if err != nil {
			return err
		}
		p.Draw(tiles.At(dc, 0, i))
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// read returns the latencies (ms) by rate.
func read(path string) (map[int][]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	out := map[int][]float64{}
	for line := 1; ; line++ {
		rec, err := r.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if line == 1 {
			continue // the header
		}
		rate, err1 := strconv.Atoi(rec[0])
		us, err2 := strconv.ParseFloat(rec[1], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s:%d: want rate,latency_us, got %v", path, line, rec)
		}
		out[rate] = append(out[rate], us/1000)
	}
}

// panel is the histogram of one rate's latencies over log-spaced buckets from 0.1 ms.
func panel(rate int, ms []float64, note string) (*plot.Plot, error) {
	slices.Sort(ms)
	q := func(f float64) float64 { return ms[min(len(ms)-1, int(f*float64(len(ms))))] }
	p := plot.New()
	p.Title.Text = fmt.Sprintf("W3 at %d rows/s: %d commits, p50 %.1f ms, p99 %.1f ms, max %.1f ms", rate, len(ms), q(0.5), q(0.99), ms[len(ms)-1])
	if note != "" {
		p.Title.Text += "\n" + note
	}
	p.X.Label.Text = "commit to visible in Redis (ms, log scale; first bar: <= 0.1 ms)"
	p.X.Tick.Marker = msTicks{}
	p.Y.Label.Text = "share of commits"
	const buckets = 40
	lo, hi := math.Log10(0.1), math.Log10(max(ms[len(ms)-1], 1)*1.01)
	counts := make(plotter.XYs, buckets)
	for i := range counts {
		counts[i].X = lo + (float64(i)+0.5)*(hi-lo)/buckets
	}
	for _, v := range ms {
		i := int((math.Log10(max(v, 0.1)) - lo) / (hi - lo) * buckets)
		counts[min(max(i, 0), buckets-1)].Y += 1 / float64(len(ms))
	}
	h, err := plotter.NewHistogram(counts, buckets)
	if err != nil {
		return nil, err
	}
	h.FillColor = color.RGBA{R: 70, G: 110, B: 190, A: 255}
	p.Add(h)
	return p, nil
}

// msTicks labels a log10 axis with the latencies in ms it stands for.
type msTicks struct{}

func (msTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, v := range []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000} {
		if x := math.Log10(v); x >= lo && x <= hi {
			ts = append(ts, plot.Tick{Value: x, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
	}
	return ts
}
