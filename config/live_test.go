package config

import (
	"slices"
	"testing"
	"time"
)

func TestLiveSettingsAreDerivedFromTheTags(t *testing.T) {
	want := []string{"sink.batch_size", "sink.flush_interval",
		"compensation.poll_interval", "compensation.initial_backoff", "compensation.max_backoff", "compensation.max_attempts",
		"bloom.null_ttl", "bloom.tombstone_ttl",
		"reconcile.schedule", "reconcile.chunk_size", "reconcile.repair", "reconcile.recheck_for", "log.level"}
	got := LiveKeys()
	for _, k := range want {
		if !slices.Contains(got, k) {
			t.Errorf("%s is not live (live: %q)", k, got)
		}
	}
	for _, k := range []string{"source.addr", "sink.workers", "redis.addrs", "bloom.expected_items", "snapshot.chunk_size"} {
		if slices.Contains(got, k) {
			t.Errorf("%s is live; it needs a restart", k)
		}
	}
}

func TestDiffAndMergeLive(t *testing.T) {
	cur := Default()
	next := Default()
	next.Sink.BatchSize = 7
	next.Compensation.MaxAttempts = 99
	next.Reconcile.Schedule = "@every 1h"
	next.Sink.Workers = 3
	next.Source.Password = "hunter2"
	next.Bloom.TombstoneTTL = time.Hour
	changes := Diff(&cur, &next)
	byKey := map[string]Change{}
	for _, c := range changes {
		byKey[c.Key] = c
	}
	if len(changes) != 6 {
		t.Fatalf("changes %+v, want 6", changes)
	}
	if c := byKey["source.password"]; !c.Secret || c.Value != "" || c.Live || c.String() != "source.password (changed)" {
		t.Errorf("password change %+v shows its value or is live", c)
	}
	if c := byKey["sink.workers"]; c.Live || c.String() != "sink.workers=3" {
		t.Errorf("sink.workers %+v", c)
	}
	if !byKey["sink.batch_size"].Live || !byKey["compensation.max_attempts"].Live || !byKey["reconcile.schedule"].Live || !byKey["bloom.tombstone_ttl"].Live {
		t.Errorf("live changes not marked live: %+v", changes)
	}
	m := MergeLive(&cur, &next)
	if m.Sink.BatchSize != 7 || m.Compensation.MaxAttempts != 99 || m.Reconcile.Schedule != "@every 1h" || m.Bloom.TombstoneTTL != time.Hour {
		t.Errorf("live settings not merged: %+v", m)
	}
	if m.Sink.Workers != cur.Sink.Workers || m.Source.Password != cur.Source.Password {
		t.Errorf("restart-only settings merged: workers %d, password %q", m.Sink.Workers, m.Source.Password)
	}
}
