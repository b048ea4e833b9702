package client_test

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/invsync/invsync/client"
	"github.com/redis/go-redis/v9"
)

// An application server reads stock through Redis. The loader reads MySQL only for keys
// Redis does not hold and the Bloom filter does not rule out.
func ExampleClient_Get() {
	var db *sql.DB // opened with github.com/go-sql-driver/mysql, for example
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})

	// load returns the mirrored columns as MySQL's text (scanned into []byte), NULLs left out, and
	// the version column's value.
	load := func(ctx context.Context, table string, pk []string) (*client.Row, error) {
		var sku, stock, version []byte
		var name sql.NullString
		err := db.QueryRowContext(ctx, "SELECT sku, stock, name, version FROM inventory WHERE sku = ?", pk[0]).
			Scan(&sku, &stock, &name, &version)
		if err == sql.ErrNoRows {
			return nil, nil // not found: a null marker keeps the next lookups off MySQL
		}
		if err != nil {
			return nil, err
		}
		row := &client.Row{Fields: map[string]string{"sku": string(sku), "stock": string(stock), "version": string(version)}, Version: string(version)}
		if name.Valid {
			row.Fields["name"] = name.String
		}
		return row, nil
	}

	c, err := client.New(rdb, []client.Table{{
		Name:      "shop.inventory",               // schema.table, as in invsync's config
		KeyPrefix: "inv:",                         // tables[].key_prefix
		BloomKey:  "invsync:bloom:shop.inventory", // bloom.key_prefix + schema.table
	}}, load, client.Options{NullTTL: time.Minute})
	if err != nil {
		panic(err)
	}
	res, err := c.Get(context.Background(), "inventory", "1001")
	switch {
	case err != nil:
		fmt.Println("error:", err)
	case res.Found:
		fmt.Println("stock", res.Row.Fields["stock"], "version", res.Row.Version, "from", res.Source)
	default:
		fmt.Println("no such SKU, answered by", res.Source)
	}
}
