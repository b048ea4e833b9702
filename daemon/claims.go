package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/source"
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

// claimedError names the namespaces another pipeline writes, that pipeline and the fix
// (one command deleting every claim in the way).
func claimedError(cs []claim, others []claimOwner) error {
	var what []string
	keys := make([]string, len(cs))
	for i, c := range cs {
		what = append(what, fmt.Sprintf("%s %q", c.setting, c.value))
		keys[i] = c.key
	}
	o := others[0]
	return fmt.Errorf("%w: %s %s %s (pipeline %s: source %s, state schema %s, since %s); several sources into one key prefix "+
		"(a sharded inventory) are not supported: they would tombstone and hide each other's rows (fix: give each source its own "+
		"key_prefix per table, bloom.key_prefix and state.schema; if that instance is gone for good, or this is the same deployment "+
		"whose state schema was recreated, delete its claims: redis-cli DEL %s)",
		source.ErrPermanent, strings.Join(what, ", "), map[bool]string{true: "is", false: "are"}[len(cs) == 1], ErrClaimed,
		o.Pipeline, o.Source, o.StateSchema, o.Since, strings.Join(keys, " "))
}

// conflicts returns the claims of cfg that another pipeline than pipeline holds.
func conflicts(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config, pipeline string) ([]claim, []claimOwner, error) {
	var cs []claim
	var os []claimOwner
	for _, c := range claims(cfg) {
		other, err := readClaim(ctx, rdb, c.key)
		if err != nil {
			return nil, nil, err
		}
		if other.Pipeline != "" && other.Pipeline != pipeline {
			cs, os = append(cs, c), append(os, other)
		}
	}
	return cs, os, nil
}

// claimRedis records this pipeline as the writer of every namespace of cfg in Redis, or
// returns an error (wrapping ErrClaimed and source.ErrPermanent) naming those another
// pipeline writes. Claims are kept without expiry; a Redis that lost them (data loss) is
// claimed again by the next call. A refused call leaves none of its claims behind.
func claimRedis(ctx context.Context, rdb redis.UniversalClient, cfg *config.Config, pipeline string) error {
	me := claimOwner{Pipeline: pipeline, Source: cfg.Source.Addr, StateSchema: cfg.State.Schema, Since: time.Now().UTC().Format(time.RFC3339)}
	val, _ := json.Marshal(me)
	if cs, os, err := conflicts(ctx, rdb, cfg, pipeline); err != nil {
		return err
	} else if len(cs) > 0 {
		return claimedError(cs, os)
	}
	var mine []string // set by this call
	for _, c := range claims(cfg) {
		ok, err := rdb.SetNX(ctx, c.key, val, 0).Result()
		if err != nil {
			return fmt.Errorf("claim %s in Redis: %w", c.key, err)
		}
		if ok {
			mine = append(mine, c.key)
			continue
		}
		other, err := readClaim(ctx, rdb, c.key)
		if err != nil {
			return err
		}
		if other.Pipeline != pipeline {
			// Another pipeline claimed at the same moment: give back what this call took.
			for _, k := range mine {
				if o, err := readClaim(ctx, rdb, k); err == nil && o.Pipeline == pipeline {
					rdb.Del(ctx, k)
				}
			}
			return claimedError([]claim{c}, []claimOwner{other})
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

// CheckClaims returns an error naming a namespace of the config that another pipeline
// writes in Redis, without claiming anything.
func (c *Conns) CheckClaims(ctx context.Context) error {
	pipeline, err := checkpoint.ReadPipelineID(ctx, c.State, c.Cfg.State.Schema, pipelineName)
	if err != nil {
		return err
	}
	if cs, os, err := conflicts(ctx, c.Redis, c.Cfg, pipeline); err != nil {
		return err
	} else if len(cs) > 0 {
		return claimedError(cs, os)
	}
	return nil
}

// pipelineName is the name of the pipeline's rows in the state schema's tables.
const pipelineName = "default"
