// Package redisscan lists the keys that match a pattern on a standalone Redis or on every
// master of a Redis Cluster, and notices when a cluster reshards under the scan.
//
// SCAN guarantees only the keys that stay on the node for the whole scan. While a cluster
// reshards, a key that moves from a master not yet scanned to one already scanned is seen
// by neither, and reading it back from the master that listed it answers MOVED or ASK. So
// on a cluster the slot layout is read from every master before and after the scan; a
// scan during which a slot was migrating, or after which the layout differs, is done
// again, and after a few tries it is reported as incomplete (ErrIncomplete) instead of
// returning fewer keys silently.
package redisscan

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/invsync/invsync/internal/backoff"
	"github.com/redis/go-redis/v9"
)

// ErrIncomplete is returned when a cluster kept resharding during every try of a scan.
var ErrIncomplete = errors.New("incomplete scan: the Redis Cluster was resharding (slots migrating or moved) during every try, so keys that moved may have been missed")

// Attempts is how many times a cluster scan is tried before ErrIncomplete; Pause is the
// first wait between tries (doubled each time, up to 4 s: about 20 s in all).
var (
	Attempts = 8
	Pause    = 500 * time.Millisecond
)

// Keys calls fn with batches of up to batch keys that match pattern, on every master.
// Read the keys through rdb (a cluster client follows MOVED and ASK), not through a
// node's connection. On a cluster, a try that the slot layout changed under is done
// again: restart (if not nil) is called first, and fn sees keys again, so fn must be
// idempotent or restart must reset what it gathered. fn is never called concurrently.
func Keys(ctx context.Context, rdb redis.UniversalClient, pattern string, batch int, fn func(ctx context.Context, keys []string) error, restart func()) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		c, ok := rdb.(*redis.Client)
		if !ok {
			return fmt.Errorf("scan: unsupported Redis client %T", rdb)
		}
		return scanNode(ctx, c, pattern, batch, &sync.Mutex{}, fn)
	}
	var lastWhy string
	pause := backoff.New(Pause, 4*time.Second)
	for try := 0; try < Attempts; try++ {
		if try > 0 {
			if restart != nil {
				restart()
			}
			cc.ReloadState(ctx)
			if err := pause.Wait(ctx); err != nil {
				return err
			}
		}
		before, stable, err := layout(ctx, cc)
		if err != nil {
			return err
		}
		if !stable {
			lastWhy = "slots migrating before the scan"
			continue
		}
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return scanNode(ctx, c, pattern, batch, &mu, fn)
		})
		if err != nil && !isRedirect(err) {
			return err
		}
		after, stable, lerr := layout(ctx, cc)
		if lerr != nil {
			return lerr
		}
		switch {
		case err != nil:
			lastWhy = err.Error()
		case !stable:
			lastWhy = "slots migrating after the scan"
		case after != before:
			lastWhy = "the slot layout changed during the scan"
		default:
			return nil
		}
	}
	return fmt.Errorf("%w (%d tries, the last: %s)", ErrIncomplete, Attempts, lastWhy)
}

// scanNode scans one node, calling fn (under mu) per batch.
func scanNode(ctx context.Context, c *redis.Client, pattern string, batch int, mu *sync.Mutex, fn func(context.Context, []string) error) error {
	iter := c.Scan(ctx, 0, pattern, int64(max(batch, 100))).Iterator()
	keys := make([]string, 0, batch)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		err := fn(ctx, keys)
		keys = keys[:0]
		return err
	}
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) >= batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}

// layout returns the masters and their slots as every master sees them; stable is false
// when a slot is migrating or importing, or when two masters disagree.
func layout(ctx context.Context, cc *redis.ClusterClient) (string, bool, error) {
	var mu sync.Mutex
	var views []string
	stable := true
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		out, err := c.ClusterNodes(ctx).Result()
		if err != nil {
			return err
		}
		var masters []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 || !strings.Contains(f[2], "master") {
				continue
			}
			for _, s := range f[8:] {
				if strings.HasPrefix(s, "[") { // [slot->-id] migrating, [slot-<-id] importing
					mu.Lock()
					stable = false
					mu.Unlock()
				}
			}
			masters = append(masters, f[0]+" "+strings.Join(f[8:], " "))
		}
		sort.Strings(masters)
		mu.Lock()
		views = append(views, strings.Join(masters, "\n"))
		mu.Unlock()
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("scan: read the cluster's slot layout: %w", err)
	}
	if len(views) == 0 {
		return "", false, nil
	}
	for _, v := range views[1:] {
		if v != views[0] {
			stable = false
		}
	}
	return views[0], stable, nil
}

// isRedirect tells a key that moved during the scan.
func isRedirect(err error) bool {
	return redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK") || redis.HasErrorPrefix(err, "TRYAGAIN")
}

// GlobEscape escapes the characters SCAN MATCH treats as a pattern, so that s matches
// itself only.
func GlobEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
