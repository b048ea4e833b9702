package source

import (
	"errors"
	"testing"
)

func TestPositionsOrderByEpochFileAndOffset(t *testing.T) {
	p := func(e uint32, f string, pos uint32) Position { return Position{Epoch: e, File: f, Pos: pos} }
	for _, c := range []struct {
		a, b Position
		want bool
	}{
		{p(0, "binlog.000001", 4), p(0, "binlog.000001", 5), true},
		{p(0, "binlog.000009", 900), p(0, "binlog.000010", 4), true}, // by file index, not text
		{p(0, "binlog.000010", 4), p(0, "binlog.000009", 900), false},
		{p(1, "binlog.000001", 4), p(0, "binlog.999999", 4), false}, // a later epoch is later
		{p(0, "binlog.999999", 4), p(1, "binlog.000001", 4), true},
		{p(0, "binlog.000001", 4), p(0, "binlog.000001", 4), false},
	} {
		if got := c.a.Before(c.b); got != c.want {
			t.Errorf("%s before %s = %v, want %v", c.a, c.b, got, c.want)
		}
	}
	f, err := p(2, "mysql-bin.000042", 4).SeqFile()
	if err != nil || f != 2*EpochStride+42 {
		t.Errorf("SeqFile = %d, %v", f, err)
	}
	if _, err := p(0, "binlog.x", 4).SeqFile(); err == nil {
		t.Error("a file name without a number has a sequence")
	}
	if _, err := p(0, "binlog.10000000", 4).SeqFile(); !errors.Is(err, ErrPermanent) {
		t.Errorf("a file index past the stride: %v, want ErrPermanent", err)
	}
	if !(Position{}).IsZero() || p(0, "binlog.000001", 4).IsZero() {
		t.Error("IsZero")
	}
	if s := p(3, "binlog.000002", 77).String(); s != "binlog.000002:77 epoch 3" {
		t.Errorf("String = %q", s)
	}
}
