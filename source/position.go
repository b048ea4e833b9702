// Package source is invsync's access to the MySQL or MariaDB source, below everything
// else: a binlog position and how positions order (position.go), the error that marks a
// problem no retry can fix, how to reach the server (Config: Dial, OpenDB) and check it
// can be followed (Check), the definitions of the mirrored tables and the decoders of
// their character sets (LoadTables, Table.Decoder), reads in a consistent snapshot with
// its exact binlog position (ReadConsistent, CurrentPosition), and questions about the
// binlog (Identity, PositionAvailable, OldestBinlog, PositionWithoutPreparedXA). It
// imports nothing of the project; the binlog reader (package canal), the checkpoint,
// snapshots, reconciliation and the daemon use it.
package source

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// ErrPermanent is wrapped by errors that a retry cannot fix (bad credentials, a purged
// position, a row that cannot be decoded).
var ErrPermanent = errors.New("permanent")

// Position is a point in the binlog: file and offset, and the GTID set executed up to
// it when the server has GTIDs, in an epoch of the source's history.
type Position struct {
	File string
	Pos  uint32
	GTID string
	// Epoch counts the times the source's history was replaced under invsync (RESET
	// MASTER, a failover to another primary whose binlog files are numbered on their
	// own, another server): positions of a later epoch come after every position of an
	// earlier one (see SeqFile).
	Epoch uint32
}

// EpochStride is the number of binlog file indices one epoch spans in a sequence: the
// file part of a binlog sequence (layout.Seq.File) is Epoch*EpochStride + the file's
// index, so that every write of a later epoch orders after every write of an earlier one.
// Writes made before epochs existed are epoch 0.
const EpochStride = 10_000_000

// SeqFile is the file part of the binlog sequences at p: the epoch and the file's index.
func (p Position) SeqFile() (uint32, error) {
	idx, err := FileIndex(p.File)
	if err != nil {
		return 0, err
	}
	if idx >= EpochStride || p.Epoch >= (1<<32-1)/EpochStride {
		return 0, fmt.Errorf("%w: binlog file %s in epoch %d is beyond what a sequence can number", ErrPermanent, p.File, p.Epoch)
	}
	return p.Epoch*EpochStride + idx, nil
}

// Before reports whether p is earlier than q in the binlog of one server (file index,
// then offset; epochs first).
func (p Position) Before(q Position) bool {
	if p.Epoch != q.Epoch {
		return p.Epoch < q.Epoch
	}
	pi, err1 := FileIndex(p.File)
	qi, err2 := FileIndex(q.File)
	if err1 != nil || err2 != nil || pi != qi {
		return pi < qi
	}
	return p.Pos < q.Pos
}

// IsZero reports whether p is unset.
func (p Position) IsZero() bool { return p.File == "" && p.GTID == "" }

// String is file:pos, plus the GTID set when known and the epoch when not 0.
func (p Position) String() string {
	s := p.File + ":" + strconv.FormatUint(uint64(p.Pos), 10)
	if p.GTID != "" {
		s += " gtid " + p.GTID
	}
	if p.Epoch != 0 {
		s += " epoch " + strconv.FormatUint(uint64(p.Epoch), 10)
	}
	return s
}

// Fields returns the position as log fields.
func (p Position) Fields() []zap.Field {
	return []zap.Field{zap.String("binlog_file", p.File), zap.Uint32("binlog_pos", p.Pos), zap.String("gtid", p.GTID), zap.Uint32("epoch", p.Epoch)}
}

// FileIndex is the number at the end of a binlog file name (mysql-bin.000042 -> 42).
func FileIndex(name string) (uint32, error) {
	dot := strings.LastIndexByte(name, '.')
	n, err := strconv.ParseUint(name[dot+1:], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("binlog file name %q does not end in a number", name)
	}
	return uint32(n), nil
}
