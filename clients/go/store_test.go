package gonestsession

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"example.invalid/gonestsession/sessionpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

func connect(t *testing.T, d *daemon, opts ...Option) *RemoteSessionStore {
	t.Helper()
	store, err := Connect(d.url(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// raw is a plain gRPC client of the daemon, to see what the store wrote.
func raw(t *testing.T, d *daemon) sessionpb.SessionStoreClient {
	conn, err := grpc.Dial(d.addr, grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sessionpb.NewSessionStoreClient(conn)
}

func TestGetSaveDestroyFollowTheContract(t *testing.T) {
	store := connect(t, startDaemon(t))
	id := newID()

	missing, err := store.Get(id)
	if missing != nil || err != nil {
		t.Fatalf("Get of a missing session: %v, %v; want nil, nil", missing, err)
	}

	session := NewSession(id)
	if err := session.SetValue("user_id", 42); err != nil {
		t.Fatal(err)
	}
	if err := session.SetValue("cart", []string{"book", "pen"}); err != nil {
		t.Fatal(err)
	}
	session.ExpiresAt = time.Now().Add(time.Hour)
	if err := store.Save(session); err != nil {
		t.Fatal(err)
	}
	if session.Version() != 1 || session.CreatedAt.IsZero() {
		t.Fatalf("after the first save: version %d, created %v", session.Version(), session.CreatedAt)
	}

	read, err := store.Get(id)
	if err != nil || read == nil {
		t.Fatalf("Get: %v, %v", read, err)
	}
	if v, ok := read.GetValue("user_id"); !ok || v != json.Number("42") {
		t.Fatalf("user_id read back as %#v", v)
	}
	if cart, _ := json.Marshal(read.Data["cart"]); string(cart) != `["book","pen"]` {
		t.Fatalf("cart read back as %s", cart)
	}
	if d := read.ExpiresAt.Sub(session.ExpiresAt); d > time.Millisecond || d < -time.Millisecond {
		t.Fatalf("expires_at off by %v", d)
	}
	read.Delete("cart")
	if err := store.Save(read); err != nil {
		t.Fatal(err)
	}
	if read.Version() != 2 {
		t.Fatalf("version after the second save: %d", read.Version())
	}

	if err := store.Destroy(id); err != nil {
		t.Fatal(err)
	}
	if gone, err := store.Get(id); gone != nil || err != nil {
		t.Fatalf("Get after Destroy: %v, %v", gone, err)
	}
	if err := store.Destroy(id); err != nil {
		t.Fatalf("destroying a missing session: %v", err)
	}
}

func TestValuesAreJSONPerKeyAndReservedKeysSurviveAGoSave(t *testing.T) {
	d := startDaemon(t)
	store, client := connect(t, d), raw(t, d)
	id := newID()
	ctx := context.Background()
	// As the Rust layer leaves a session: its expiry under a reserved key, values as JSON, and
	// a value that is not JSON.
	_, err := client.Save(ctx, &sessionpb.SaveRequest{Session: &sessionpb.Session{Id: id, Data: map[string][]byte{
		"__gonest.expiry": []byte(`{"inactivity":86400}`),
		"name":            []byte(`"ada"`),
		"big":             []byte(`9007199254740993`),
		"blob":            {0xff, 0x00},
	}}})
	if err != nil {
		t.Fatal(err)
	}

	_, err = store.Update(ctx, id, func(s *Session) error { return s.SetValue("user_id", 42) })
	if err != nil {
		t.Fatal(err)
	}

	answer, err := client.Get(ctx, &sessionpb.GetRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"__gonest.expiry": `{"inactivity":86400}`,
		"name":            `"ada"`,
		"big":             `9007199254740993`,
		"blob":            "\xff\x00",
		"user_id":         `42`,
	}
	got := answer.Session.Data
	if len(got) != len(want) {
		t.Fatalf("stored keys %v, want %v", got, want)
	}
	for key, value := range want {
		if string(got[key]) != value {
			t.Errorf("%s stored as %q, want %q", key, got[key], value)
		}
	}
	if err := NewSession(id).SetValue("__mine", 1); err == nil {
		t.Error("a reserved key was accepted")
	}
	if err := NewSession(id).SetValue("f", func() {}); err == nil {
		t.Error("a value that is not JSON was accepted")
	}
}

func TestASaveAfterAnotherIsAConflictAndUpdateAppliesAgain(t *testing.T) {
	store := connect(t, startDaemon(t))
	id := newID()
	first := NewSession(id)
	_ = first.SetValue("n", 0)
	if err := store.Save(first); err != nil {
		t.Fatal(err)
	}
	// The same id created again: taken.
	again := NewSession(id)
	_ = again.SetValue("n", 100)
	if err := store.Save(again); !errors.Is(err, ErrConflict) {
		t.Fatalf("creating a taken id: %v, want ErrConflict", err)
	}

	a, _ := store.Get(id)
	b, _ := store.Get(id)
	_ = a.SetValue("a", true)
	if err := store.Save(a); err != nil {
		t.Fatal(err)
	}
	_ = b.SetValue("b", true)
	err := store.Save(b)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("a save after another: %v, want ErrConflict", err)
	}
	var storeErr *StoreError
	if !errors.As(err, &storeErr) || storeErr.Code != codes.Aborted {
		t.Fatalf("the conflict's code: %v", err)
	}

	updated, err := store.Update(context.Background(), id, func(s *Session) error { return s.SetValue("b", true) })
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a", "b", "n"} {
		if _, ok := updated.GetValue(key); !ok {
			t.Errorf("%s lost", key)
		}
	}
	if missing, err := store.Update(context.Background(), newID(), func(*Session) error {
		t.Error("apply called for a missing session")
		return nil
	}); missing != nil || err != nil {
		t.Fatalf("Update of a missing session: %v, %v", missing, err)
	}
}

func TestADaemonThatIsDownIsAnErrorNeverAHang(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	listener.Close()
	started := time.Now()
	if _, err := Connect("http://"+addr, WithConnectTimeout(300*time.Millisecond)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Connect to nothing: %v, want ErrUnavailable", err)
	}

	d := startDaemon(t)
	store := connect(t, d, WithTimeout(500*time.Millisecond))
	d.kill()
	for _, call := range []func() error{
		func() error { _, err := store.Get(newID()); return err },
		func() error { s := NewSession(newID()); _ = s.SetValue("k", 1); return store.Save(s) },
		func() error { return store.Destroy(newID()) },
	} {
		if err := call(); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("a call to a stopped daemon: %v, want ErrUnavailable", err)
		}
	}
	if elapsed := time.Since(started); elapsed > 20*time.Second {
		t.Fatalf("the failures took %v", elapsed)
	}
}

func TestBadInputIsAClearError(t *testing.T) {
	for _, url := range []string{"", "127.0.0.1:7070", "ftp://host:1", "http://"} {
		if _, err := Connect(url); err == nil {
			t.Errorf("Connect(%q) accepted", url)
		}
	}
	store := connect(t, startDaemon(t))
	_, err := store.Get("has space")
	var storeErr *StoreError
	if !errors.As(err, &storeErr) || storeErr.Code != codes.InvalidArgument {
		t.Fatalf("Get of a bad id: %v, want INVALID_ARGUMENT", err)
	}
	if got := err.Error(); got[:len("gonestsession: get: INVALID_ARGUMENT")] != "gonestsession: get: INVALID_ARGUMENT" {
		t.Fatalf("message %q", got)
	}
}

func TestABearerTokenIsSent(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("a-token-of-at-least-32-characters-long-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--auth-token-file", token)
	without := connect(t, d)
	var storeErr *StoreError
	if _, err := without.Get(newID()); !errors.As(err, &storeErr) || storeErr.Code != codes.Unauthenticated {
		t.Fatalf("without the token: %v, want UNAUTHENTICATED", err)
	}
	with := connect(t, d, WithToken("a-token-of-at-least-32-characters-long-0123"))
	if _, err := with.Get(newID()); err != nil {
		t.Fatalf("with the token: %v", err)
	}
}
