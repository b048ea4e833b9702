package source

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestConfigNeverPrintsItsPassword(t *testing.T) {
	c := Config{Addr: "db:3306", User: "invsync", Flavor: "mariadb"}.WithPassword("s3cret-pw")
	if c.pass() != "s3cret-pw" {
		t.Fatal("the password is not kept")
	}
	// A Config held in an unexported field: fmt cannot call its String there.
	holder := struct {
		src Config
		Src Config
	}{c, c}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(verb, c); strings.Contains(out, "s3cret-pw") || !strings.Contains(out, "invsync@db:3306") {
			t.Errorf("%s: %q", verb, out)
		}
		for _, v := range []any{&c, holder, &holder} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, "s3cret-pw") {
				t.Errorf("%s of %T: %q", verb, v, out)
			}
		}
	}
	if b, err := json.Marshal(holder); err != nil || strings.Contains(string(b), "s3cret-pw") {
		t.Errorf("JSON: %s %v", b, err)
	}
}

func TestZoneOffset(t *testing.T) {
	if got := ZoneOffset(nil); got != "+00:00" {
		t.Errorf("ZoneOffset(nil) = %q", got)
	}
	if got := ZoneOffset(time.FixedZone("x", -(5*3600 + 30*60))); got != "-05:30" {
		t.Errorf("ZoneOffset(-05:30) = %q", got)
	}
}
