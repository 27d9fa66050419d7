// Package gonestsession keeps GoNest sessions in gonest-sessiond, the session daemon that Rust
// and Node apps share, and provides the session middleware for net/http.
//
// RemoteSessionStore implements GoNest's SessionStore interface (Get, Save, Destroy) over the
// daemon's gRPC contract (proto/proto/gonest/session/v1/session.proto):
//
//	store, err := gonestsession.Connect("http://127.0.0.1:7070")
//	if err != nil { ... }
//	defer store.Close()
//	handler := gonestsession.NewSessionMiddleware(gonestsession.SessionOptions{Store: store})(mux)
//
// Values are stored as the Rust layer and the Node store store them, as JSON under each key, so
// every stack reads the others' values; keys beginning with "__" belong to the session layers
// and come back unchanged from a Go save.
package gonestsession

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"example.invalid/gonestsession/sessionpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// SessionStore is GoNest's storage interface for sessions. Get returns nil, nil for a session
// that does not exist (or has expired).
type SessionStore interface {
	Get(sessionID string) (*Session, error)
	Save(session *Session) error
	Destroy(sessionID string) error
}

// ErrConflict is the error (matched with errors.Is) of a Save that found the session changed,
// destroyed or created by someone else since it was read: nothing was written. Read it again
// and apply the change again; RemoteSessionStore.Update does both.
var ErrConflict = errors.New("gonestsession: the session changed since it was read")

// ErrUnavailable is the error (matched with errors.Is) of a call that the daemon did not
// answer: it is down, unreachable or too slow. The call may succeed later.
var ErrUnavailable = errors.New("gonestsession: the session daemon is unavailable")

// ReservedPrefix starts the keys that belong to the session layers (such as the Rust layer's
// expiry); a Go save keeps them as they are, and SetValue refuses them.
const ReservedPrefix = "__"

// Session is one user's session: its values, and when it was created and expires.
type Session struct {
	// ID identifies the session; the cookie carries it.
	ID string
	// Data holds the values, each stored as its JSON. Numbers read back as json.Number, so that
	// no integer loses precision; encoding/json writes them back as they were.
	Data map[string]any
	// CreatedAt is when the session was first saved.
	CreatedAt time.Time
	// ExpiresAt is when the session ends. A Save sends it as is; zero means the daemon's
	// default lifetime.
	ExpiresAt time.Time
	// Owner is who the session belongs to (a user id; "" for nobody), so that the daemon can
	// list a user's sessions and log them out everywhere.
	Owner string

	mu sync.Mutex
	// version is the version the session was read or last saved at; 0 for a new session.
	version uint64
	// kept holds values a Go save writes back byte for byte: reserved keys, and values that are
	// not JSON (written by an app that stores bytes).
	kept map[string][]byte
	// changes are the keys set or deleted since the session was read, for the middleware to
	// apply again on top of another instance's save.
	changes map[string]change
	// ownerSet says SetOwner was called since the session was read.
	ownerSet bool
	// regenerate and destroy are the middleware's instructions from the handler.
	regenerate, destroy bool
}

type change struct {
	value   any
	deleted bool
}

// NewSession returns an empty session with the given id, not yet stored.
func NewSession(id string) *Session {
	return &Session{ID: id, Data: map[string]any{}}
}

// GetValue returns the value stored under key, and whether there is one.
func (s *Session) GetValue(key string) (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	value, ok := s.Data[key]
	return value, ok
}

// SetValue stores value under key. The value must encode as JSON; keys beginning with "__" are
// reserved and refused (the call then changes nothing).
func (s *Session) SetValue(key string, value any) error {
	if strings.HasPrefix(key, ReservedPrefix) {
		return fmt.Errorf("gonestsession: keys beginning with %q are reserved: %q", ReservedPrefix, key)
	}
	if _, err := json.Marshal(value); err != nil {
		return fmt.Errorf("gonestsession: the value of %q does not encode as JSON: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Data == nil {
		s.Data = map[string]any{}
	}
	s.Data[key] = value
	delete(s.kept, key)
	s.record(key, change{value: value})
	return nil
}

// Delete removes key from the session.
func (s *Session) Delete(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.Data, key)
	delete(s.kept, key)
	s.record(key, change{deleted: true})
}

// SetOwner says who the session belongs to (a user id; "" for nobody), so that the daemon can
// list the user's sessions and log them out everywhere. Set it at login, next to RegenerateID.
func (s *Session) SetOwner(owner string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Owner = owner
	s.ownerSet = true
}

// RegenerateID gives the session a new id when the middleware saves it, keeping its values; the
// old id is destroyed. Call it at login, so that an id planted before it is worthless after.
func (s *Session) RegenerateID() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.regenerate = true
}

// Destroy ends the session when the request is answered: the middleware removes it from the
// store and sends a cookie that expires at once.
func (s *Session) Destroy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.destroy = true
}

// Version is the version the session was read or last saved at; 0 for a session never stored.
func (s *Session) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

func (s *Session) record(key string, c change) {
	if s.changes == nil {
		s.changes = map[string]change{}
	}
	s.changes[key] = c
}

// modified says whether a value was set or deleted since the session was read.
func (s *Session) modified() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.changes) > 0 || s.ownerSet
}

// reapply applies s's changes on top of fresh, a newer read of the same session.
func (s *Session) reapply(fresh *Session) {
	s.mu.Lock()
	changes, ownerSet, owner := s.changes, s.ownerSet, s.Owner
	s.mu.Unlock()
	if ownerSet {
		fresh.SetOwner(owner)
	}
	for key, c := range changes {
		if c.deleted {
			fresh.Delete(key)
		} else {
			fresh.mu.Lock()
			if fresh.Data == nil {
				fresh.Data = map[string]any{}
			}
			fresh.Data[key] = c.value
			delete(fresh.kept, key)
			fresh.record(key, c)
			fresh.mu.Unlock()
		}
	}
}

// Option configures Connect.
type Option func(*options)

type options struct {
	token          string
	tls            *tls.Config
	timeout        time.Duration
	connectTimeout time.Duration
}

// WithToken sends token as a bearer token on every call (the daemon's --auth-token-file).
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithTLS sets the TLS configuration for an https:// URL (by default the system's roots).
func WithTLS(config *tls.Config) Option {
	return func(o *options) { o.tls = config }
}

// WithCACertificate trusts the PEM certificate(s) in pem for an https:// URL, instead of the
// system's roots.
func WithCACertificate(pem []byte) Option {
	return func(o *options) {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		o.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
}

// WithTimeout bounds each call (default 2 s, as the Rust client). A call given a context with
// an earlier deadline ends at that deadline.
func WithTimeout(timeout time.Duration) Option {
	return func(o *options) { o.timeout = timeout }
}

// WithConnectTimeout bounds Connect's first connection (default 1 s).
func WithConnectTimeout(timeout time.Duration) Option {
	return func(o *options) { o.connectTimeout = timeout }
}

// RemoteSessionStore is a SessionStore kept by a gonest-sessiond daemon. It is safe for
// concurrent use; make one per process and share it.
type RemoteSessionStore struct {
	conn    *grpc.ClientConn
	client  sessionpb.SessionStoreClient
	timeout time.Duration
}

var _ SessionStore = (*RemoteSessionStore)(nil)

// bearer sends a token on every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false for http:// URLs: the daemon takes tokens over plain
// connections on loopback and private networks, as the Rust client sends them.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Connect connects to the daemon at rawURL (http://host:port, or https:// for TLS) and returns
// the store once the connection is up; a daemon that cannot be reached within the connect
// timeout is an error wrapping ErrUnavailable. The connection is kept and re-made as needed.
func Connect(rawURL string, opts ...Option) (*RemoteSessionStore, error) {
	o := options{timeout: 2 * time.Second, connectTimeout: time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("gonestsession: the daemon's URL must be http://host:port or https://host:port, not %q", redact(rawURL))
	}
	if o.timeout <= 0 || o.connectTimeout <= 0 {
		return nil, errors.New("gonestsession: timeouts must be positive")
	}
	dial := []grpc.DialOption{grpc.WithBlock()}
	if u.Scheme == "https" {
		config := o.tls
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: o.token, secure: u.Scheme == "https"}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.connectTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, u.Host, dial...)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot connect to %s: %v", ErrUnavailable, u.Host, err)
	}
	return &RemoteSessionStore{conn: conn, client: sessionpb.NewSessionStoreClient(conn), timeout: o.timeout}, nil
}

// redact hides a URL's password.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	u.User = url.User(u.User.Username())
	return u.String()
}

// Close closes the connection.
func (s *RemoteSessionStore) Close() error { return s.conn.Close() }

func (s *RemoteSessionStore) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// Get returns the session with id sessionID, or nil, nil when there is none.
func (s *RemoteSessionStore) Get(sessionID string) (*Session, error) {
	return s.GetContext(context.Background(), sessionID)
}

// Save stores session. A session read by Get (or saved before) is saved only if nobody saved
// or destroyed it since; a new one (NewSession) only if its id is free. Otherwise the error
// matches ErrConflict and nothing is written. On success the session's version, CreatedAt and
// ExpiresAt are the stored ones.
func (s *RemoteSessionStore) Save(session *Session) error {
	return s.SaveContext(context.Background(), session)
}

// Destroy removes the session with id sessionID; destroying one that does not exist is not an
// error.
func (s *RemoteSessionStore) Destroy(sessionID string) error {
	return s.DestroyContext(context.Background(), sessionID)
}

// GetContext is Get with a context.
func (s *RemoteSessionStore) GetContext(ctx context.Context, sessionID string) (*Session, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	answer, err := s.client.Get(ctx, &sessionpb.GetRequest{Id: sessionID})
	if err != nil {
		return nil, storeError("get", err)
	}
	if answer.Session == nil {
		return nil, nil
	}
	return fromPB(answer.Session), nil
}

// SaveContext is Save with a context.
func (s *RemoteSessionStore) SaveContext(ctx context.Context, session *Session) error {
	request, err := toPB(session)
	if err != nil {
		return err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	answer, err := s.client.Save(ctx, request)
	if err != nil {
		return storeError("save", err)
	}
	session.mu.Lock()
	session.version = answer.Version
	session.CreatedAt = answer.CreatedAt.AsTime()
	session.ExpiresAt = answer.ExpiresAt.AsTime()
	session.changes = nil
	session.ownerSet = false
	session.mu.Unlock()
	return nil
}

// DestroyContext is Destroy with a context.
func (s *RemoteSessionStore) DestroyContext(ctx context.Context, sessionID string) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.client.Destroy(ctx, &sessionpb.DestroyRequest{Id: sessionID}); err != nil {
		return storeError("destroy", err)
	}
	return nil
}

// DestroyByOwner removes every session of owner except those in except ("log out everywhere"),
// and returns how many it removed.
func (s *RemoteSessionStore) DestroyByOwner(ctx context.Context, owner string, except ...string) (uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	answer, err := s.client.DestroyByOwner(ctx, &sessionpb.DestroyByOwnerRequest{Owner: owner, ExceptIds: except})
	if err != nil {
		return 0, storeError("destroy by owner", err)
	}
	return answer.Destroyed, nil
}

// updateAttempts bounds Update's reads: each conflict means another writer came first.
const updateAttempts = 8

// Update reads the session, applies apply to it and saves it, reading and applying again when
// another save came first (ErrConflict). It returns the saved session, or nil, nil when there
// is no such session (apply is then not called). An error from apply ends it unsaved.
func (s *RemoteSessionStore) Update(ctx context.Context, sessionID string, apply func(*Session) error) (*Session, error) {
	for attempt := 0; attempt < updateAttempts; attempt++ {
		session, err := s.GetContext(ctx, sessionID)
		if err != nil || session == nil {
			return nil, err
		}
		if err := apply(session); err != nil {
			return nil, err
		}
		err = s.SaveContext(ctx, session)
		if err == nil {
			return session, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %d other saves came first", ErrConflict, updateAttempts)
}

// StoreError is a refusal or failure the daemon answered (or the call's failure to reach it),
// with its gRPC code. It matches ErrConflict (ABORTED) and ErrUnavailable (UNAVAILABLE,
// DEADLINE_EXCEEDED) with errors.Is.
type StoreError struct {
	// Op is the call: "get", "save", "destroy", ...
	Op string
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the daemon's message.
	Message string
}

func (e *StoreError) Error() string {
	return fmt.Sprintf("gonestsession: %s: %s: %s", e.Op, codeName(e.Code), e.Message)
}

// Is matches the sentinel errors of the codes.
func (e *StoreError) Is(target error) bool {
	switch target {
	case ErrConflict:
		return e.Code == codes.Aborted
	case ErrUnavailable:
		return e.Code == codes.Unavailable || e.Code == codes.DeadlineExceeded
	}
	return false
}

func storeError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &StoreError{Op: op, Code: codes.DeadlineExceeded, Message: err.Error()}
	}
	st, _ := status.FromError(err)
	return &StoreError{Op: op, Code: st.Code(), Message: st.Message()}
}

// codeName spells a code as gRPC's documentation does: UNAVAILABLE, DEADLINE_EXCEEDED, ...
func codeName(code codes.Code) string {
	var b strings.Builder
	for i, r := range code.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteString(strings.ToUpper(string(r)))
	}
	return b.String()
}

func fromPB(pb *sessionpb.Session) *Session {
	session := &Session{
		ID:        pb.Id,
		Data:      make(map[string]any, len(pb.Data)),
		CreatedAt: pb.CreatedAt.AsTime(),
		ExpiresAt: pb.ExpiresAt.AsTime(),
		Owner:     pb.Owner,
		version:   pb.Version,
	}
	for key, raw := range pb.Data {
		if !strings.HasPrefix(key, ReservedPrefix) {
			decoder := json.NewDecoder(bytes.NewReader(raw))
			decoder.UseNumber()
			var value any
			if decoder.Decode(&value) == nil && !decoder.More() {
				session.Data[key] = value
				continue
			}
		}
		if session.kept == nil {
			session.kept = map[string][]byte{}
		}
		session.kept[key] = raw
	}
	return session
}

func toPB(session *Session) (*sessionpb.SaveRequest, error) {
	session.mu.Lock()
	defer session.mu.Unlock()
	data := make(map[string][]byte, len(session.Data)+len(session.kept))
	for key, raw := range session.kept {
		data[key] = raw
	}
	for key, value := range session.Data {
		if strings.HasPrefix(key, ReservedPrefix) {
			continue
		}
		encoded, err := json.Marshal(value)
		if err != nil {
			return nil, fmt.Errorf("gonestsession: the value of %q does not encode as JSON: %w", key, err)
		}
		data[key] = encoded
	}
	pb := &sessionpb.Session{Id: session.ID, Data: data, Owner: session.Owner}
	if !session.ExpiresAt.IsZero() {
		pb.ExpiresAt = timestamppb.New(session.ExpiresAt)
	}
	expected := session.version
	return &sessionpb.SaveRequest{Session: pb, ExpectedVersion: &expected}, nil
}
