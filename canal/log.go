package canal

import (
	"io"
	"log/slog"
)

// slogDiscard silences go-mysql's own logger: invsync logs what matters with zap, with
// the position as fields.
func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
