package config_test

import (
	"os"
	"testing"

	"github.com/invsync/invsync/config"
)

//go:generate go run ../internal/configdoc config.go ../docs/configuration.md

// docs/configuration.md is what the doc comments of config.go generate.
func TestReferenceIsCurrent(t *testing.T) {
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	want, err := config.Reference(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../docs/configuration.md")
	if err != nil || string(got) != want {
		t.Fatalf("docs/configuration.md is out of date (%v): run `go generate ./config`", err)
	}
}
