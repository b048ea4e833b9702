package daemon_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/invsync/invsync/config"
)

// Every metric the Grafana dashboard queries is one invsync defines.
func TestDashboardQueriesKnownMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, dir := range []string{"../metrics", "../bloom", ".", "../client"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			s, _ := os.ReadFile(f)
			src.Write(s)
		}
	}
	names := regexp.MustCompile(`invsync_[a-z_]+`).FindAllString(string(b), -1)
	if len(names) < 15 {
		t.Fatalf("only %d metric references in the dashboard", len(names))
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if !strings.Contains(src.String(), `"`+base+`"`) {
			t.Errorf("the dashboard queries %s, which invsync does not define", n)
		}
	}
}

// The sample configs are valid.
func TestSampleConfigsAreValid(t *testing.T) {
	for _, f := range []string{"../deploy/invsync.yaml", "../testdata/demo.yaml"} {
		if _, err := config.Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
