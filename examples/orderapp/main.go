// Command orderapp is a small order service that starts each order's
// TalkJS conversation through the outbox: the order and its conversation
// intent are written in one transaction, so either both exist or neither
// does, and the request never waits on TalkJS. An outbox-relay delivers the
// intent.
//
//	DATABASE_URL=postgres://… go run ./examples/orderapp
//	curl -d '{"buyer":{"id":"u1","name":"Alice","email":"alice@example.com"},
//	          "seller":{"id":"u2","name":"Bob","email":"bob@example.com"},
//	          "item":"A blue scarf"}' localhost:8080/orders
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// schema is the application's own table; the outbox schema comes from
// `outbox-relay migrate`.
const schema = `CREATE TABLE IF NOT EXISTS orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    buyer_id   text NOT NULL,
    seller_id  text NOT NULL,
    item       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)`

// party is a buyer or a seller as the client sends it.
type party struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

type orderRequest struct {
	Buyer  party  `json:"buyer"`
	Seller party  `json:"seller"`
	Item   string `json:"item"`
}

type orderResponse struct {
	OrderID        int64  `json:"order_id"`
	IntentID       int64  `json:"intent_id"`
	ConversationID string `json:"conversation_id"`
}

// newHandler serves POST /orders.
func newHandler(pool *pgxpool.Pool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		var req orderRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, "invalid JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		if req.Item == "" {
			http.Error(w, "item is required", http.StatusBadRequest)
			return
		}
		resp, err := placeOrder(r.Context(), pool, req)
		var invalid *outbox.ValidationError
		switch {
		case errors.As(err, &invalid):
			// The intent was refused before anything was written.
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case err != nil:
			log.Printf("place order: %v", err)
			http.Error(w, "could not place the order", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(resp)
	})
	return mux
}

// placeOrder writes the order and its conversation intent in one
// transaction.
func placeOrder(ctx context.Context, pool *pgxpool.Pool, req orderRequest) (orderResponse, error) {
	var resp orderResponse
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO orders (buyer_id, seller_id, item) VALUES ($1, $2, $3) RETURNING id`,
			req.Buyer.ID, req.Seller.ID, req.Item).Scan(&resp.OrderID); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		order := strconv.FormatInt(resp.OrderID, 10)
		resp.ConversationID = "order_" + order
		id, err := outbox.Enqueue(ctx, tx, outbox.Intent{
			Users: []outbox.User{
				{ID: req.Buyer.ID, Name: req.Buyer.Name, Email: []string{req.Buyer.Email}, Role: "buyer"},
				{ID: req.Seller.ID, Name: req.Seller.Name, Email: []string{req.Seller.Email}, Role: "seller"},
			},
			Conversation: outbox.Conversation{
				ID:      resp.ConversationID,
				Subject: "Order #" + order,
				Custom:  map[string]string{"orderId": order},
			},
			Messages: []outbox.Message{
				{Type: outbox.SystemMessage, Text: "Order #" + order + " placed: " + req.Item},
			},
		}, outbox.WithKey("order-"+order)) // one conversation start per order, whatever retries
		if err != nil {
			return err
		}
		resp.IntentID = id
		return nil
	})
	return resp, err
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		return errors.New("DATABASE_URL is required")
	}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	srv := &http.Server{Addr: addr, Handler: newHandler(pool), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Printf("orderapp listening on %s", addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
