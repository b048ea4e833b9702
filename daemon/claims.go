package daemon

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/redis/go-redis/v9"
)

// Several sources into one Redis under one key prefix (a sharded inventory, each shard's
// primary followed by an invsync of its own) are not supported: each instance sweeps,
// reconciles, orders (`_s`) and rebuilds the Bloom filter of the whole prefix as its own,
// so they would tombstone and hide each other's rows. Each pipeline (one state schema:
// a leader and its standbys) claims in Redis the namespaces it writes: every table's
// key_prefix, every table's Bloom bitmap and its state schema's markers. An instance that
// finds one claimed by another pipeline refuses to start, naming the setting to change.

// claim is one namespace of Redis a pipeline writes.
type claim struct {
	key     string // the Redis key that records the owner
	setting string // the config setting that names the namespace
	value   string // the namespace
}

// claimOwner is what a claim key holds.
type claimOwner struct {
	Pipeline    string `json:"pipeline"`
	Source      string `json:"source"`
	StateSchema string `json:"state_schema"`
	Since       string `json:"since"`
}

// ErrClaimed is returned when another pipeline writes under a namespace of this config.
var ErrClaimed = errors.New("written by another invsync")

// claims lists the namespaces cfg writes in Redis.
func claims(cfg *config.Config) []claim {
	cs := []claim{{key: "invsync:owner:state:" + cfg.State.Schema, setting: "state.schema", value: cfg.State.Schema}}
	for i, t := range cfg.Tables {
		cs = append(cs,
			claim{key: "invsync:owner:prefix:" + t.KeyPrefix, setting: fmt.Sprintf("tables[%d].key_prefix (%s)", i, t.TableName()), value: t.KeyPrefix},
			claim{key: "invsync:owner:bloom:" + cfg.BloomKey(t), setting: fmt.Sprintf("bloom.key_prefix (the bitmap of %s)", t.TableName()), value: cfg.BloomKey(t)})
	}
	return cs
}

// claimedError names the namespace, the other pipeline and the fix.
func claimedError(c claim, other claimOwner) error {
	return fmt.Errorf("%w: %s %q is %s (pipeline %s: source %s, state schema %s, since %s); several sources into one key prefix "+
		"(a sharded inventory) are not supported: they would tombstone and hide each other's rows (fix: give each source its own "+
		"key_prefix per table, bloom.key_prefix and state.schema; if that instance is gone for good, delete its claim: redis-cli DEL %s)",
		canal.ErrPermanent, c.setting, c.value, ErrClaimed, other.Pipeline, other.Source, other.StateSchema, other.Since, c.key)
}

// claimRedis records this pipeline as the writer of every namespace of cfg in Redis, or
// returns an error (wrapping ErrClaimed and canal.ErrPermanent) naming one that another
// pipeline writes. Claims are kept without expiry; a Redis that lost them (data loss) is
// claimed again by the next call.
func claimRedis(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config, pipeline string) error {
	me := claimOwner{Pipeline: pipeline, Source: cfg.Source.Addr, StateSchema: cfg.State.Schema, Since: time.Now().UTC().Format(time.RFC3339)}
	val, _ := json.Marshal(me)
	// All or nothing: a refused instance leaves no claim behind.
	for _, c := range claims(cfg) {
		other, err := readClaim(ctx, rdb, c.key)
		if err != nil {
			return err
		}
		if other.Pipeline != "" && other.Pipeline != pipeline {
			return claimedError(c, other)
		}
	}
	for _, c := range claims(cfg) {
		ok, err := rdb.SetNX(ctx, c.key, val, 0).Result()
		if err != nil {
			return fmt.Errorf("claim %s in Redis: %w", c.key, err)
		}
		if ok {
			continue
		}
		other, err := readClaim(ctx, rdb, c.key)
		if err != nil {
			return err
		}
		if other.Pipeline != pipeline {
			return claimedError(c, other)
		}
	}
	return nil
}

// readClaim returns the owner recorded at key (zero when none).
func readClaim(ctx context.Context, rdb redis.UniversalClient, key string) (claimOwner, error) {
	raw, err := rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return claimOwner{}, nil
	}
	if err != nil {
		return claimOwner{}, fmt.Errorf("read the claim %s in Redis: %w", key, err)
	}
	var o claimOwner
	if json.Unmarshal([]byte(raw), &o) != nil || o.Pipeline == "" {
		o = claimOwner{Pipeline: raw, Source: "?", StateSchema: "?", Since: "?"}
	}
	return o, nil
}

// CheckClaims is check-config's view: it returns an error naming a namespace of cfg that
// another pipeline writes in Redis, without claiming anything.
func CheckClaims(ctx context.Context, cfg *config.Config, source *sql.DB, rdb redis.UniversalClient) error {
	stateDB, err := OpenStateDB(cfg, source)
	if err != nil {
		return err
	}
	if stateDB != source {
		defer stateDB.Close()
	}
	pipeline, err := checkpoint.ReadPipelineID(ctx, stateDB, cfg.State.Schema, pipelineName)
	if err != nil {
		return err
	}
	for _, c := range claims(cfg) {
		other, err := readClaim(ctx, rdb, c.key)
		if err != nil {
			return err
		}
		if other.Pipeline != "" && other.Pipeline != pipeline {
			return claimedError(c, other)
		}
	}
	return nil
}

// pipelineName is the name of the pipeline's rows in the state schema's tables.
const pipelineName = "default"
