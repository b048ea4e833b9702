package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// A reload applies the settings tagged `live:"true"` (a field, or a whole section) while
// the daemon runs; any other change needs a restart. The tags are the only list: Diff and
// MergeLive are derived from them. Fields tagged `secret:"true"` are never shown.

// Change is one setting that differs between two configs.
type Change struct {
	Key    string // the YAML path, e.g. sink.batch_size
	Value  string // the new value ("" for a secret)
	Live   bool   // a reload applies it while running
	Secret bool
}

// String is the change as a log shows it: key=value, or the key alone for a secret.
func (c Change) String() string {
	if c.Secret {
		return c.Key + " (changed)"
	}
	return c.Key + "=" + c.Value
}

// Diff lists the settings whose values differ from cur to next.
func Diff(cur, next *Config) []Change {
	a, b := reflect.ValueOf(*cur), reflect.ValueOf(*next)
	var out []Change
	settings(func(s setting) {
		fa, fb := a.FieldByIndex(s.index), b.FieldByIndex(s.index)
		if reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			return
		}
		c := Change{Key: s.key, Live: s.live, Secret: s.secret}
		if !c.Secret {
			c.Value = fmt.Sprint(fb.Interface())
		}
		out = append(out, c)
	})
	return out
}

// MergeLive returns cur with next's live settings.
func MergeLive(cur, next *Config) Config {
	merged := *cur
	dst, src := reflect.ValueOf(&merged).Elem(), reflect.ValueOf(*next)
	settings(func(s setting) {
		if s.live {
			dst.FieldByIndex(s.index).Set(src.FieldByIndex(s.index))
		}
	})
	return merged
}

// LiveKeys lists the settings a reload applies while running (for docs and messages).
func LiveKeys() []string {
	var out []string
	settings(func(s setting) {
		if s.live {
			out = append(out, s.key)
		}
	})
	return out
}

// setting is one leaf of Config: its key, where it is (reflect's field index path),
// and its tags.
type setting struct {
	key          string
	index        []int
	live, secret bool
}

// settings calls fn for every leaf setting of Config, in the order of the structs.
func settings(fn func(setting)) {
	var walk func(prefix string, index []int, t reflect.Type, live bool)
	walk = func(prefix string, index []int, t reflect.Type, live bool) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("mapstructure")
			if tag == "" {
				continue
			}
			s := setting{key: strings.TrimPrefix(prefix+"."+tag, "."), index: append(index[:len(index):len(index)], i),
				live: live || f.Tag.Get("live") == "true", secret: f.Tag.Get("secret") == "true"}
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walk(s.key, s.index, f.Type, s.live)
				continue
			}
			fn(s)
		}
	}
	walk("", nil, reflect.TypeOf(Config{}), false)
}

var durationType = reflect.TypeOf(time.Duration(0))
