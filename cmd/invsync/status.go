package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
)

// statusCmd is `invsync status`.
func statusCmd(args []string, stdout, stderr io.Writer) int {
	f := newFlags("status", "invsync status [-c FILE]", `
Print the checkpoint and its age, the lag, the leader, pending and dead compensation
rows, and each table's Bloom filter.`, `  0  the status was read
  1  the source, the state database or Redis could not be read
  2  bad arguments or an invalid config file`, stdout, stderr)
	cfg, code := f.config(args, stderr)
	if cfg == nil {
		return code
	}
	return status(cfg, *f.cfgPath, stdout, stderr)
}

func status(cfg *config.Config, cfgPath string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := readStatus(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: status: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "config\t%s\n", cfgPath)
	if st.HasCheckpoint {
		fmt.Fprintf(tw, "checkpoint\t%s\t(written %s ago)\n", st.Checkpoint, st.CheckpointAge.Round(time.Millisecond))
	} else {
		fmt.Fprintf(tw, "checkpoint\tnone yet\t(the first `invsync run` loads every table)\n")
	}
	fmt.Fprintf(tw, "source\t%s\t(the binlog's current end)\n", st.Source)
	switch {
	case st.LeaderConnection != 0 && st.LeaderIdle >= daemon.LeaseTimeout:
		fmt.Fprintf(tw, "leader\tgone\t(state database connection %d holds %s but has been idle %s, past the %s lease: its instance froze or was cut off; a standby takes over)\n",
			st.LeaderConnection, daemon.LockName(cfg), st.LeaderIdle, daemon.LeaseTimeout)
	case st.LeaderConnection != 0 && st.LeaderKnown:
		fmt.Fprintf(tw, "leader\tan instance leads\t(%s, pid %d, http://%s; state database connection %d holds %s)\n",
			st.Leader.Host, st.Leader.PID, st.Leader.HTTPAddr, st.LeaderConnection, daemon.LockName(cfg))
	case st.LeaderConnection != 0:
		fmt.Fprintf(tw, "leader\tan instance leads\t(state database connection %d holds %s)\n", st.LeaderConnection, daemon.LockName(cfg))
	default:
		fmt.Fprintf(tw, "leader\tnone\t(no instance runs this config)\n")
	}
	switch {
	case st.DaemonReachable && st.Ready:
		fmt.Fprintf(tw, "daemon\tstreaming\t(lag %.2fs, %.0f keys queued; http://%s)\n", st.LagSeconds, st.QueueDepth, st.DaemonAddr)
	case st.DaemonReachable:
		fmt.Fprintf(tw, "daemon\tnot streaming\t(standing by, starting, or waiting for a server; http://%s)\n", st.DaemonAddr)
	default:
		fmt.Fprintf(tw, "daemon\tnot reachable\t(%s)\n", st.DaemonErr)
	}
	comp := fmt.Sprintf("%d pending, %d dead", st.Pending, st.Dead)
	if st.Pending > 0 {
		comp += fmt.Sprintf(", oldest pending %s", st.OldestPending.Round(time.Second))
	}
	fmt.Fprintf(tw, "compensation\t%s\n", comp)
	for _, h := range st.Holds {
		fmt.Fprintf(tw, "reservations\t%s: %d unit(s) held on %d row(s)\n", h.Table, h.Held, h.Rows)
	}
	if len(st.Holds) > 0 && st.DaemonReachable {
		fmt.Fprintf(tw, "settlements\t%.0f ended a hold, %.0f found none; %.0f hold(s) expired\t(since the daemon started)\n", st.SettledHolds, st.SettledWithoutHold, st.HoldsExpired)
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "bloom table\tkey\tcomplete\tbits\thashes\titems (est.)\tfalse-positive rate (est.)")
	for _, b := range st.Bloom {
		if b.Bits == 0 {
			fmt.Fprintf(tw, "%s\t%s\tno\t-\t-\t-\t- (not built: readers treat every key as possibly present)\n", b.Table, b.Key)
			continue
		}
		complete := "yes"
		if !b.Complete {
			complete = "no"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.0f\t%.2g\n", b.Table, b.Key, complete, b.Bits, b.Hashes, b.Items, b.FalsePositiveRate)
	}
	tw.Flush()
	return 0
}
