package daemon

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
)

// WithReload makes the daemon reload the config file at path when it changes (a watch on
// its directory, so that a replaced file is followed too) and on SIGHUP; level is the
// logger's level, which log.level sets.
func WithReload(path string, level zap.AtomicLevel) Option {
	return func(d *Daemon) {
		d.reloadPath = path
		d.level = &level
	}
}

// watchConfig reloads the config on file changes and SIGHUP until ctx ends.
func (d *Daemon) watchConfig(ctx context.Context) {
	trigger := make(chan string, 1)
	fire := func(why string) {
		select {
		case trigger <- why:
		default:
		}
	}
	// The directory is watched, not the file: editors, `install` and config management
	// replace a file (remove and create, or rename over it), and a watch on the file
	// itself (viper's WatchConfig) ends with the file it watched.
	if stop, err := watchFile(ctx, d.reloadPath, func() { fire("the file changed") }, d.log); err != nil {
		d.log.Warn("cannot watch the config file; reload with SIGHUP", zap.String("file", d.reloadPath), zap.Error(err))
	} else {
		defer stop()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			d.reload("SIGHUP")
		case why := <-trigger:
			// Editors write a file in several steps: let them finish.
			time.Sleep(100 * time.Millisecond)
			d.reload(why)
		}
	}
}

// reload reads, decodes and validates the file, then applies what can change live.
func (d *Daemon) reload(why string) {
	next, err := config.Load(d.reloadPath)
	if err != nil {
		d.m.ConfigReloads.WithLabelValues("refused").Inc()
		d.log.Error("config reload refused; the running config stays", zap.String("file", d.reloadPath), zap.String("trigger", why), zap.Error(err))
		return
	}
	cur := d.live.Load()
	changes := config.Diff(cur, next)
	if len(changes) == 0 {
		d.m.ConfigReloads.WithLabelValues("unchanged").Inc()
		d.log.Info("config reloaded: nothing changed", zap.String("trigger", why))
		return
	}
	var applied, restart []string
	for _, c := range changes {
		if c.Live {
			applied = append(applied, c.String())
		} else {
			restart = append(restart, c.String())
		}
	}
	// The settings tagged live in package config (see config.LiveKeys).
	merged := config.MergeLive(cur, next)
	d.live.Store(&merged)

	if d.level != nil {
		if lvl, err := zapcore.ParseLevel(merged.Log.Level); err == nil {
			d.level.SetLevel(lvl)
		}
	}
	if sk := d.sk.Load(); sk != nil {
		sk.SetTuning(merged.Sink.BatchSize, merged.Sink.FlushInterval)
	}
	if r := d.running.Load(); r != nil {
		r.writer.SetTTLs(merged.Bloom.TombstoneTTL, merged.Bloom.NullTTL)
		r.comp.SetSchedule(compensation.NewSchedule(merged.Compensation))
		r.retrier.SetInterval(merged.Compensation.PollInterval)
		if cur.Reconcile.Schedule != merged.Reconcile.Schedule {
			if err := r.reschedule(); err != nil {
				d.log.Error("the new reconcile.schedule could not be started", zap.Error(err))
			}
		}
	}
	d.m.ConfigReloads.WithLabelValues("applied").Inc()
	d.log.Info("config reloaded", zap.String("trigger", why), zap.Strings("applied", applied))
	if len(restart) > 0 {
		d.log.Warn("config reloaded, but these changes need a restart of invsync to take effect", zap.Strings("restart_needed", restart))
	}
}

// watchFile calls changed whenever the file at path is written, created, renamed onto or
// removed and created again, until ctx ends or the returned function is called. It
// watches the file's directory, and logs if the watch itself ends.
func watchFile(ctx context.Context, path string, changed func(), log *zap.Logger) (stop func(), err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, err
	}
	target := filepath.Clean(abs)
	var watching errgroup.Group
	watching.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case ev, ok := <-w.Events:
				if !ok {
					log.Error("the config file watch ended; reload with SIGHUP", zap.String("file", path))
					return nil
				}
				if filepath.Clean(ev.Name) == target && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
					changed()
				}
			case err, ok := <-w.Errors:
				if !ok {
					log.Error("the config file watch ended; reload with SIGHUP", zap.String("file", path))
					return nil
				}
				log.Warn("config file watch error", zap.String("file", path), zap.Error(err))
			}
		}
	})
	return func() { w.Close(); _ = watching.Wait() }, nil
}
