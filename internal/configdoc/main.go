// Command configdoc writes docs/configuration.md from config/config.go (go generate ./config).
package main

import (
	"fmt"
	"os"

	"github.com/invsync/invsync/config"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: configdoc config.go OUT.md")
		os.Exit(2)
	}
	src, err := os.ReadFile(os.Args[1])
	if err == nil {
		var doc string
		if doc, err = config.Reference(src); err == nil {
			err = os.WriteFile(os.Args[2], []byte(doc), 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "configdoc:", err)
		os.Exit(1)
	}
}
