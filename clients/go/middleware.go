package gonestsession

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// SessionOptions configures NewSessionMiddleware. The zero value of each field is its default.
type SessionOptions struct {
	// Store keeps the sessions (required).
	Store SessionStore
	// CookieName is the session cookie's name (default "gonest.sid").
	CookieName string
	// MaxAge is how long a session lives after its last save (default 24 h).
	MaxAge time.Duration
	// Secure sends the cookie over HTTPS only (default false).
	Secure bool
	// HTTPOnly hides the cookie from scripts. It is always on unless DisableHTTPOnly is set: the
	// zero value means the default, true.
	HTTPOnly bool
	// DisableHTTPOnly lets scripts read the cookie.
	DisableHTTPOnly bool
	// SameSite is the cookie's SameSite policy (default http.SameSiteLaxMode).
	SameSite http.SameSite
	// Path is the cookie's path (default "/").
	Path string
	// Secrets sign the cookie as express-session signs it (cookie-signature: HMAC-SHA256), so
	// that express and Rust apps with the same secret share the login. The first signs; all
	// verify, for rotation. None: the cookie carries the bare id.
	Secrets []string
}

// saveAttempts bounds the reads a save makes again after other instances' saves came first.
const saveAttempts = 4

type contextKey struct{}

// GetSession returns the request's session, or nil outside NewSessionMiddleware.
func GetSession(r *http.Request) *Session {
	state, _ := r.Context().Value(contextKey{}).(*requestState)
	if state == nil {
		return nil
	}
	return state.session
}

// NewSessionMiddleware returns middleware that gives each request its session (GetSession),
// from the cookie, and saves it when the handler changed it, before the response's headers go
// out. A session is stored, and a cookie sent, only once a value is set. A store that fails
// answers 503. It panics when opts.Store is nil.
func NewSessionMiddleware(opts SessionOptions) func(http.Handler) http.Handler {
	if opts.Store == nil {
		panic("gonestsession: SessionOptions.Store is required")
	}
	if opts.CookieName == "" {
		opts.CookieName = "gonest.sid"
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 24 * time.Hour
	}
	if opts.SameSite == 0 {
		opts.SameSite = http.SameSiteLaxMode
	}
	if opts.Path == "" {
		opts.Path = "/"
	}
	opts.HTTPOnly = !opts.DisableHTTPOnly
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			state := &requestState{opts: &opts, ctx: r.Context()}
			if id, ok := opts.cookieID(r); ok {
				session, err := getContext(r.Context(), opts.Store, id)
				if err != nil {
					unavailable(w)
					return
				}
				state.session = session
			}
			if state.session == nil {
				// An id the store does not have is never adopted: a new session gets a new id.
				state.session = NewSession(newID())
				state.new = true
			}
			out := &writer{ResponseWriter: w, state: state}
			next.ServeHTTP(out, r.WithContext(context.WithValue(r.Context(), contextKey{}, state)))
			if !out.committed {
				out.commit()
			}
		})
	}
}

// requestState is what the middleware knows of one request's session.
type requestState struct {
	opts    *SessionOptions
	ctx     context.Context
	session *Session
	// new: the session was not read from the store.
	new bool
}

// commit saves or destroys the session as the handler left it, and sets the cookie.
func (s *requestState) commit(header http.Header) error {
	session := s.session
	session.mu.Lock()
	destroy, regenerate := session.destroy, session.regenerate
	session.mu.Unlock()
	store := s.opts.Store
	switch {
	case destroy:
		if !s.new {
			if err := destroyContext(s.ctx, store, session.ID); err != nil {
				return err
			}
			s.setCookie(header, "", -1)
		}
		return nil
	case regenerate && !s.new:
		old := session.ID
		fresh := copyAsNew(session)
		if err := s.saveNew(fresh); err != nil {
			return err
		}
		s.session = fresh
		if err := destroyContext(s.ctx, store, old); err != nil {
			return err
		}
	case !session.modified():
		return nil
	case s.new:
		if err := s.saveNew(session); err != nil {
			return err
		}
	default:
		saved, err := s.saveRead(session)
		if err != nil {
			return err
		}
		if !saved {
			// Destroyed meanwhile (a logout elsewhere): it stays destroyed.
			s.setCookie(header, "", -1)
			return nil
		}
	}
	s.setCookie(header, s.session.ID, int(s.opts.MaxAge/time.Second))
	return nil
}

// saveNew stores a session under a free id: a new id whenever the one it has is taken.
func (s *requestState) saveNew(session *Session) error {
	for attempt := 0; attempt < saveAttempts; attempt++ {
		session.ExpiresAt = time.Now().Add(s.opts.MaxAge)
		err := saveContext(s.ctx, s.opts.Store, session)
		if !errors.Is(err, ErrConflict) {
			return err
		}
		session.ID = newID()
	}
	return errors.New("gonestsession: no free session id")
}

// saveRead saves a session read from the store, applying its changes again on top of any save
// that came first. It reports false when the session was destroyed meanwhile.
func (s *requestState) saveRead(session *Session) (bool, error) {
	for attempt := 0; attempt < saveAttempts; attempt++ {
		session.ExpiresAt = time.Now().Add(s.opts.MaxAge)
		err := saveContext(s.ctx, s.opts.Store, session)
		if !errors.Is(err, ErrConflict) {
			return err == nil, err
		}
		fresh, err := getContext(s.ctx, s.opts.Store, session.ID)
		if err != nil || fresh == nil {
			return false, err
		}
		session.reapply(fresh)
		s.session, session = fresh, fresh
	}
	return false, ErrConflict
}

// copyAsNew is session's values and owner in a new session with a new id.
func copyAsNew(session *Session) *Session {
	session.mu.Lock()
	defer session.mu.Unlock()
	fresh := NewSession(newID())
	for key, value := range session.Data {
		fresh.Data[key] = value
	}
	for key, raw := range session.kept {
		if fresh.kept == nil {
			fresh.kept = map[string][]byte{}
		}
		fresh.kept[key] = raw
	}
	fresh.Owner = session.Owner
	return fresh
}

func (s *requestState) setCookie(header http.Header, id string, maxAge int) {
	value := id
	if id != "" && len(s.opts.Secrets) > 0 {
		value = sign(id, s.opts.Secrets[0])
	}
	cookie := &http.Cookie{
		Name:     s.opts.CookieName,
		Value:    value,
		Path:     s.opts.Path,
		MaxAge:   maxAge,
		Secure:   s.opts.Secure,
		HttpOnly: s.opts.HTTPOnly,
		SameSite: s.opts.SameSite,
	}
	if maxAge > 0 {
		cookie.Expires = time.Now().Add(time.Duration(maxAge) * time.Second).UTC()
	} else {
		cookie.Expires = time.Unix(0, 0).UTC()
	}
	header.Add("Set-Cookie", cookie.String())
}

// writer saves the session before the handler's headers go out.
type writer struct {
	http.ResponseWriter
	state     *requestState
	committed bool
	// failed: the store failed; the answer is 503 and the handler's is dropped.
	failed bool
}

func (w *writer) commit() {
	w.committed = true
	if err := w.state.commit(w.ResponseWriter.Header()); err != nil {
		w.failed = true
		unavailable(w.ResponseWriter)
	}
}

func (w *writer) WriteHeader(code int) {
	if !w.committed {
		w.commit()
	}
	if !w.failed {
		w.ResponseWriter.WriteHeader(code)
	}
}

func (w *writer) Write(body []byte) (int, error) {
	if !w.committed {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return len(body), nil
	}
	return w.ResponseWriter.Write(body)
}

// unavailable answers 503 with the JSON the other stacks answer.
func unavailable(w http.ResponseWriter) {
	header := w.Header()
	header.Del("Set-Cookie")
	header.Set("Content-Type", "application/json")
	header.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(`{"statusCode":503,"message":"session store unavailable"}` + "\n"))
}

// The store calls, with the request's context when the store takes one.
type contextStore interface {
	GetContext(context.Context, string) (*Session, error)
	SaveContext(context.Context, *Session) error
	DestroyContext(context.Context, string) error
}

func getContext(ctx context.Context, store SessionStore, id string) (*Session, error) {
	if s, ok := store.(contextStore); ok {
		return s.GetContext(ctx, id)
	}
	return store.Get(id)
}

func saveContext(ctx context.Context, store SessionStore, session *Session) error {
	if s, ok := store.(contextStore); ok {
		return s.SaveContext(ctx, session)
	}
	return store.Save(session)
}

func destroyContext(ctx context.Context, store SessionStore, id string) error {
	if s, ok := store.(contextStore); ok {
		return s.DestroyContext(ctx, id)
	}
	return store.Destroy(id)
}

// idBytes is an id's randomness: 256 bits, as the Rust layer's.
const idBytes = 32

// newID is a new session id: 256 bits from the OS, unpadded base64url (43 characters).
func newID() string {
	var b [idBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("gonestsession: the OS random number generator failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// wellFormed: an id this package (or the Rust layer) issues.
func wellFormed(id string) bool {
	decoded, err := base64.RawURLEncoding.DecodeString(id)
	return len(id) == 43 && err == nil && len(decoded) == idBytes
}

// wellFormedSigned: an id this package or express-session issues (uid-safe's 24 bytes, 32
// characters), accepted behind a verified signature only.
func wellFormedSigned(id string) bool {
	if wellFormed(id) {
		return true
	}
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// cookieID is the session id the request's cookie carries, if it is one: signed by one of the
// secrets when there are secrets, of an issued id's form in any case.
func (o *SessionOptions) cookieID(r *http.Request) (string, bool) {
	cookie, err := r.Cookie(o.CookieName)
	if err != nil {
		return "", false
	}
	if len(o.Secrets) == 0 {
		return cookie.Value, wellFormed(cookie.Value)
	}
	return unsign(cookie.Value, o.Secrets)
}

func mac(id, secret string) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(id))
	return h.Sum(nil)
}

// sign is id signed with secret as express-session writes it: "s:" + id + "." + the unpadded
// base64 of HMAC-SHA256, percent-encoded as encodeURIComponent does.
func sign(id, secret string) string {
	signature := base64.RawStdEncoding.EncodeToString(mac(id, secret))
	signature = strings.NewReplacer("+", "%2B", "/", "%2F").Replace(signature)
	return "s%3A" + id + "." + signature
}

// unsign is the id in a signed value, if the signature verifies with one of secrets (compared
// in constant time).
func unsign(value string, secrets []string) (string, bool) {
	decoded, err := url.PathUnescape(value)
	if err != nil || !strings.HasPrefix(decoded, "s:") {
		return "", false
	}
	dot := strings.LastIndexByte(decoded, '.')
	if dot < 2 {
		return "", false
	}
	id := decoded[2:dot]
	signature, err := base64.RawStdEncoding.DecodeString(decoded[dot+1:])
	if err != nil || !wellFormedSigned(id) {
		return "", false
	}
	for _, secret := range secrets {
		if hmac.Equal(signature, mac(id, secret)) {
			return id, true
		}
	}
	return "", false
}
