package source

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckBinlogSettings(t *testing.T) {
	if ps := checkBinlogSettings("db:3306", "1", "ROW", "FULL"); len(ps) != 0 {
		t.Fatalf("good settings reported %v", ps)
	}
	cases := map[string][3]string{
		"binary log is off":           {"0", "ROW", "FULL"},
		"binlog_format is STATEMENT":  {"ON", "STATEMENT", "FULL"},
		"binlog_format is MIXED":      {"ON", "MIXED", "FULL"},
		"binlog_row_image is MINIMAL": {"ON", "ROW", "MINIMAL"},
		"binlog_row_image is NOBLOB":  {"ON", "ROW", "NOBLOB"},
	}
	for want, v := range cases {
		ps := checkBinlogSettings("db:3306", v[0], v[1], v[2])
		if len(ps) != 1 || !strings.Contains(ps[0].Err.Error(), want) || !strings.Contains(ps[0].Err.Error(), "fix:") {
			t.Errorf("%v: got %v, want one problem saying %q with a fix", v, ps, want)
			continue
		}
		if !errors.Is(ps[0].Err, ErrPermanent) {
			t.Errorf("%v: a wrong server setting must be permanent (no retry loop)", v)
		}
	}
}
