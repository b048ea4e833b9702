package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseArgsKeepsNegativeKeysPositional(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantPos []string
		wantCfg string
	}{
		{[]string{"-c", "a.yaml", "shop.inventory", "-5:neg"}, []string{"shop.inventory", "-5:neg"}, "a.yaml"},
		{[]string{"shop.inventory", "-5", "-c", "b.yaml"}, []string{"shop.inventory", "-5"}, "b.yaml"},
		{[]string{"--c=c.yaml", "shop.inventory", "--", "-c", "-h"}, []string{"shop.inventory", "-c", "-h"}, "c.yaml"},
		{[]string{"shop.inventory", "7", "-"}, []string{"shop.inventory", "7", "-"}, "invsync.yaml"},
	} {
		f := newFlags("get", "invsync get", "", "", &bytes.Buffer{}, &bytes.Buffer{})
		pos, err := f.parseArgs(tc.args)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if !slices.Equal(pos, tc.wantPos) || *f.cfgPath != tc.wantCfg {
			t.Errorf("%q: positional %q, -c %q; want %q, %q", tc.args, pos, *f.cfgPath, tc.wantPos, tc.wantCfg)
		}
	}
}

func TestParseArgsFlagValues(t *testing.T) {
	f := newFlags("reconcile", "invsync reconcile", "", "", &bytes.Buffer{}, &bytes.Buffer{})
	repair := f.Bool("repair", false, "")
	n := f.Int("samples", 100, "")
	var tables stringList
	f.Var(&tables, "table", "")
	pos, err := f.parseArgs([]string{"--repair", "--samples", "7", "--table=a", "-table", "b"})
	if err != nil || len(pos) != 0 || !*repair || *n != 7 || !slices.Equal(tables, stringList{"a", "b"}) {
		t.Fatalf("pos %q err %v repair %v samples %d tables %q", pos, err, *repair, *n, tables)
	}
	if _, err := f.parseArgs([]string{"--samples"}); err == nil {
		t.Error("a flag without its value was accepted")
	}
	if _, err := f.parseArgs([]string{"--samples", "many"}); err == nil {
		t.Error("a bad value was accepted")
	}
}

// runCLI runs the command line in-process and returns its exit status and outputs.
func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestEveryCommandHasItsOwnHelp(t *testing.T) {
	for _, c := range commands {
		args := [][]string{{c.name, "--help"}, {"help", c.name}}
		if c.name == "compensation" {
			args = [][]string{{c.name, "list", "--help"}, {c.name, "replay", "-h"}, {c.name, "purge", "--help"}}
		}
		for _, a := range args {
			code, out, errOut := runCLI(a...)
			if code != 0 || !strings.Contains(out, "usage: invsync "+c.name) || !strings.Contains(out, "exit status:") || !strings.Contains(out, "config file") {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", a, code, out, errOut)
			}
		}
	}
	if code, out, _ := runCLI("--help"); code != 0 || !strings.Contains(out, "reconcile") {
		t.Errorf("invsync --help: exit %d, %q", code, out)
	}
	if code, _, errOut := runCLI(); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("invsync: exit %d, %q", code, errOut)
	}
}

func TestFlagsOfOtherCommandsAreRefused(t *testing.T) {
	for _, a := range [][]string{
		{"run", "--json"},
		{"status", "--repair"},
		{"snapshot", "extra"},
		{"reconcile", "--id", "3"},
		{"compensation", "list", "--older-than", "1h"},
		{"compensation", "purge"},
		{"compensation", "nosuch"},
		{"nosuch"},
		{"get", "shop.inventory"},
	} {
		if code, _, errOut := runCLI(a...); code != 2 || errOut == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", a, code, errOut)
		}
	}
}

// A negative key reaches the command: with a config file that does not exist, `get`
// fails on the file (exit 2), not on the key taken for a flag.
func TestGetTakesANegativeKey(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, a := range [][]string{
		{"get", "-c", missing, "shop.inventory", "-5:neg"},
		{"get", "shop.inventory", "-5:neg", "-c", missing},
		{"get", "-c", missing, "shop.inventory", "--", "-5"},
	} {
		code, _, errOut := runCLI(a...)
		if code != 2 || !strings.Contains(errOut, "missing.yaml") || strings.Contains(errOut, "not defined") {
			t.Errorf("%q: exit %d, stderr %q", a, code, errOut)
		}
	}
}
