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
	return diff("", reflect.ValueOf(*cur), reflect.ValueOf(*next), false)
}

func diff(prefix string, a, b reflect.Value, live bool) []Change {
	var out []Change
	t := a.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		if tag == "" {
			continue
		}
		key := strings.TrimPrefix(prefix+"."+tag, ".")
		isLive := live || f.Tag.Get("live") == "true"
		fa, fb := a.Field(i), b.Field(i)
		if isSection(fa) {
			out = append(out, diff(key, fa, fb, isLive)...)
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			c := Change{Key: key, Live: isLive, Secret: f.Tag.Get("secret") == "true"}
			if !c.Secret {
				c.Value = fmt.Sprint(fb.Interface())
			}
			out = append(out, c)
		}
	}
	return out
}

// MergeLive returns cur with next's live settings.
func MergeLive(cur, next *Config) Config {
	merged := *cur
	mergeLive(reflect.ValueOf(&merged).Elem(), reflect.ValueOf(*next), false)
	return merged
}

func mergeLive(dst, src reflect.Value, live bool) {
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Tag.Get("mapstructure") == "" {
			continue
		}
		isLive := live || f.Tag.Get("live") == "true"
		if isSection(dst.Field(i)) {
			mergeLive(dst.Field(i), src.Field(i), isLive)
		} else if isLive {
			dst.Field(i).Set(src.Field(i))
		}
	}
}

// LiveKeys lists the settings a reload applies while running (for docs and messages).
func LiveKeys() []string {
	var out []string
	var walk func(prefix string, t reflect.Type, live bool)
	walk = func(prefix string, t reflect.Type, live bool) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("mapstructure")
			if tag == "" {
				continue
			}
			key := strings.TrimPrefix(prefix+"."+tag, ".")
			isLive := live || f.Tag.Get("live") == "true"
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walk(key, f.Type, isLive)
			} else if isLive {
				out = append(out, key)
			}
		}
	}
	walk("", reflect.TypeOf(Config{}), false)
	return out
}

var durationType = reflect.TypeOf(time.Duration(0))

// isSection reports whether v is a nested section (a struct other than a duration).
func isSection(v reflect.Value) bool {
	return v.Kind() == reflect.Struct && v.Type() != durationType
}
