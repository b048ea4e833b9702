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

// A flash sale: hold a unit in Redis, take the payment, confirm in MySQL with a guarded
// UPDATE and the settlement row in one transaction (the invsync daemon then ends the
// hold with the stock change), or give the hold back.
func ExampleClient_Reserve() {
	ctx := context.Background()
	var db *sql.DB // opened with github.com/go-sql-driver/mysql, for example
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	c, err := client.New(rdb, []client.Table{{
		Name:      "shop.inventory",
		KeyPrefix: "inv:",
		// tables[].reservations of invsync's config.
		Reservations: &client.Reservations{StockColumn: "stock", PerUserLimit: 2, HoldTTL: 15 * time.Minute},
	}}, func(context.Context, string, []string) (*client.Row, error) { return nil, nil }, client.Options{})
	if err != nil {
		panic(err)
	}
	sku, order, user := "1001", "order-42", "user-7"
	r, err := c.Reserve(ctx, "inventory", []string{sku}, order, user, 1)
	if err != nil || r.Outcome != client.Held {
		fmt.Println("not reserved:", r.Outcome, err) // sold_out, limit, unknown_row
		return
	}
	paid := true // the payment, within the hold's 15 minutes
	if !paid {
		_, _, _ = c.Release(ctx, "inventory", []string{sku}, order)
		return
	}
	confirmed, err := func() (bool, error) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return false, err
		}
		defer tx.Rollback()
		res, err := tx.ExecContext(ctx, "UPDATE inventory SET stock = stock - 1 WHERE sku = ? AND stock >= 1", sku)
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return false, nil
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders (order_id, sku, qty, user_id) VALUES (?, ?, 1, ?)", order, sku, user); err != nil {
			return false, err
		}
		return true, tx.Commit()
	}()
	switch {
	case err != nil:
		fmt.Println("confirm:", err) // the hold stays until it expires, or release it
	case !confirmed:
		_, _, _ = c.Refused(ctx, "inventory", []string{sku}, order) // a false admission
	default:
		fmt.Println("sold")
	}
}
