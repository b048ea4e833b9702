package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/invsync/invsync/config"
)

// The command line is parsed with the standard library's flag package, one FlagSet per
// command: invsync has a handful of commands with a few flags each, and cobra/pflag
// would add a dependency without removing the one thing the standard parser gets wrong
// here (pflag too takes "-5:neg" for shorthand flags). parseArgs below adds what the
// commands need: flags before, between or after the positional arguments, and
// positional arguments that start with '-' (a negative primary key).

// cmdFlags is one command's flags: -c and the command's own, with its usage line, what
// it does and its exit codes, printed by --help.
type cmdFlags struct {
	*flag.FlagSet
	cfgPath *string
	usage   string // after "usage: "
	about   string
	exits   string
	stdout  io.Writer
}

// newFlags returns the flags of the command name. Parse errors go to stderr; --help
// goes to stdout.
func newFlags(name, usage, about, exits string, stdout, stderr io.Writer) *cmdFlags {
	f := &cmdFlags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), usage: usage, about: about, exits: exits, stdout: stdout}
	f.SetOutput(stderr)
	f.cfgPath = f.String("c", "invsync.yaml", "config file")
	f.Usage = func() { f.printHelp(f.Output()) }
	return f
}

func (f *cmdFlags) printHelp(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nflags:\n", f.usage, strings.TrimSpace(f.about))
	f.SetOutput(w)
	f.PrintDefaults()
	fmt.Fprintf(w, "\nexit status:\n%s\n", strings.TrimRight(f.exits, "\n"))
}

// errHelp ends a command that was asked for its help (exit 0).
var errHelp = errors.New("help requested")

// parseArgs parses args into f and returns the positional arguments. A flag may come
// before, between or after them. An argument that starts with '-' but names no flag of
// the command (such as the key -5:neg) is positional, and so is every argument after
// "--". -h and --help print the command's help and return errHelp.
func (f *cmdFlags) parseArgs(args []string) ([]string, error) {
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(pos, args[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		if name == "h" || name == "help" {
			f.printHelp(f.stdout)
			return nil, errHelp
		}
		fl := f.Lookup(name)
		if fl == nil {
			pos = append(pos, a)
			continue
		}
		if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && !hasValue {
			value = "true"
		} else if !hasValue {
			if i+1 == len(args) {
				return nil, f.fail("flag needs an argument: %s", a)
			}
			i++
			value = args[i]
		}
		if err := f.Set(name, value); err != nil {
			return nil, f.fail("invalid value %q for flag -%s: %v", value, name, err)
		}
	}
	return pos, nil
}

// fail reports a usage error, with the usage line, on the command's error output.
func (f *cmdFlags) fail(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	fmt.Fprintf(f.Output(), "invsync %s: %v\nusage: %s (--help for more)\n", f.Name(), err, f.usage)
	return err
}

// noArgs fails when a command that takes no positional argument got one (a flag of
// another command, a typo).
func (f *cmdFlags) noArgs(pos []string) error {
	if len(pos) > 0 {
		return f.fail("unknown flag or argument %q", pos[0])
	}
	return nil
}

// parseCode is the exit status of a command whose arguments ended it: 0 for --help,
// 2 for a usage error.
func parseCode(err error) int {
	if errors.Is(err, errHelp) {
		return 0
	}
	return 2
}

// loadConfig reads the command's config file, reporting a bad one (exit 2).
func (f *cmdFlags) loadConfig(stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(*f.cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "invsync: %v\n", err)
		return nil, false
	}
	return cfg, true
}

// config parses the arguments of a command that takes none besides its flags and loads
// its config file; a nil config comes with the exit status to end the command with (0
// after --help, 2 for bad arguments or an invalid file).
func (f *cmdFlags) config(args []string, stderr io.Writer) (*config.Config, int) {
	pos, err := f.parseArgs(args)
	if err == nil {
		err = f.noArgs(pos)
	}
	if err != nil {
		return nil, parseCode(err)
	}
	cfg, ok := f.loadConfig(stderr)
	if !ok {
		return nil, 2
	}
	return cfg, 0
}
