package gonestsession

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
)

// app serves handlers behind the middleware on store, with opts.
func app(t *testing.T, opts SessionOptions, routes map[string]http.HandlerFunc) *httptest.Server {
	mux := http.NewServeMux()
	for path, handler := range routes {
		mux.HandleFunc(path, handler)
	}
	server := httptest.NewServer(NewSessionMiddleware(opts)(mux))
	t.Cleanup(server.Close)
	return server
}

func browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

type answer struct {
	status  int
	body    string
	cookies []*http.Cookie
	header  http.Header
}

func do(t *testing.T, client *http.Client, method, url string, cookie *http.Cookie) answer {
	t.Helper()
	request, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cookie != nil {
		request.AddCookie(cookie)
	}
	response, err := client.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	return answer{response.StatusCode, string(body), response.Cookies(), response.Header}
}

// controller is the seed's controller, with a route that stores nothing.
func controller() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"/noop": func(w http.ResponseWriter, r *http.Request) {
			if GetSession(r) == nil {
				w.WriteHeader(http.StatusInternalServerError)
			}
		},
		"/cart": func(w http.ResponseWriter, r *http.Request) {
			_ = GetSession(r).SetValue("cart", "book")
		},
		"/login": func(w http.ResponseWriter, r *http.Request) {
			session := GetSession(r)
			session.RegenerateID()
			session.SetOwner("42")
			_ = session.SetValue("user_id", 42)
			_, _ = w.Write([]byte(`{"status":"logged in"}`))
		},
		"/profile": func(w http.ResponseWriter, r *http.Request) {
			value, ok := GetSession(r).GetValue("user_id")
			if !ok {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"user_id": value})
		},
		"/destroy": func(w http.ResponseWriter, r *http.Request) { GetSession(r).Destroy() },
	}
}

func only(t *testing.T, cookies []*http.Cookie, name string) *http.Cookie {
	t.Helper()
	var found *http.Cookie
	for _, c := range cookies {
		if c.Name == name {
			if found != nil {
				t.Fatalf("two %s cookies", name)
			}
			found = c
		}
	}
	if found == nil {
		t.Fatalf("no %s cookie in %v", name, cookies)
	}
	return found
}

func TestTheCookieFollowsTheSeedsDefaultsAndOnlyComesWithAStoredSession(t *testing.T) {
	store := connect(t, startDaemon(t))
	server := app(t, SessionOptions{Store: store}, controller())
	client := browser(t)

	if a := do(t, client, "GET", server.URL+"/noop", nil); a.status != 200 || len(a.cookies) != 0 {
		t.Fatalf("a request that stored nothing: %d, cookies %v", a.status, a.cookies)
	}
	a := do(t, client, "POST", server.URL+"/login", nil)
	if a.status != 200 {
		t.Fatalf("login: %d %s", a.status, a.body)
	}
	raw := a.header.Get("Set-Cookie")
	for _, part := range []string{"gonest.sid=", "Path=/", "Max-Age=86400", "HttpOnly", "SameSite=Lax"} {
		if !strings.Contains(raw, part) {
			t.Errorf("Set-Cookie %q lacks %s", raw, part)
		}
	}
	if strings.Contains(raw, "Secure") {
		t.Errorf("Set-Cookie %q is Secure by default", raw)
	}
	if id := only(t, a.cookies, "gonest.sid").Value; !wellFormed(id) {
		t.Errorf("the id %q is not 256 bits of base64url", id)
	}
	if a := do(t, client, "GET", server.URL+"/profile", nil); a.status != 200 || strings.TrimSpace(a.body) != `{"user_id":42}` {
		t.Fatalf("profile: %d %s", a.status, a.body)
	}
	if a := do(t, client, "GET", server.URL+"/profile", nil); len(a.cookies) != 0 {
		t.Fatalf("a read sent a cookie: %v", a.cookies)
	}
}

func TestLoginRotatesTheIdAndKeepsTheValues(t *testing.T) {
	store := connect(t, startDaemon(t))
	server := app(t, SessionOptions{Store: store}, controller())
	client := browser(t)
	before := only(t, do(t, client, "POST", server.URL+"/cart", nil).cookies, "gonest.sid").Value

	after := only(t, do(t, client, "POST", server.URL+"/login", nil).cookies, "gonest.sid").Value

	if after == before {
		t.Fatal("login kept the id")
	}
	if old, _ := store.Get(before); old != nil {
		t.Fatal("the id from before login still names a session")
	}
	session, _ := store.Get(after)
	if session == nil || session.Owner != "42" {
		t.Fatalf("the logged-in session: %+v", session)
	}
	if _, ok := session.GetValue("cart"); !ok {
		t.Fatal("the cart was lost at login")
	}
}

func TestAnIdTheStoreDoesNotHaveIsNeverAdopted(t *testing.T) {
	store := connect(t, startDaemon(t))
	server := app(t, SessionOptions{Store: store}, controller())
	planted := newID()
	for _, value := range []string{planted, "short", strings.Repeat("a", 300)} {
		a := do(t, http.DefaultClient, "POST", server.URL+"/cart", &http.Cookie{Name: "gonest.sid", Value: value})
		if got := only(t, a.cookies, "gonest.sid").Value; got == value {
			t.Fatalf("the planted id %q was adopted", value)
		}
	}
	if s, _ := store.Get(planted); s != nil {
		t.Fatal("a session was stored under the planted id")
	}
}

func TestSignedCookiesAreExpressSessionsFormat(t *testing.T) {
	// cookie-signature: sign('hello', 'tobiiscool') === 'hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI'
	if got := base64.RawStdEncoding.EncodeToString(mac("hello", "tobiiscool")); got != "DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI" {
		t.Fatalf("HMAC %s", got)
	}
	store := connect(t, startDaemon(t))
	server := app(t, SessionOptions{Store: store, Secrets: []string{"new", "old"}}, controller())
	client := browser(t)
	cookie := only(t, do(t, client, "POST", server.URL+"/login", nil).cookies, "gonest.sid")
	if !strings.HasPrefix(cookie.Value, "s%3A") {
		t.Fatalf("signed cookie %q", cookie.Value)
	}
	id, ok := unsign(cookie.Value, []string{"new"})
	if !ok {
		t.Fatalf("%q does not verify", cookie.Value)
	}
	if a := do(t, http.DefaultClient, "GET", server.URL+"/profile", cookie); a.status != 200 {
		t.Fatalf("the signed cookie: %d", a.status)
	}
	// Signed with the old secret (rotation): verifies.
	oldSigned := &http.Cookie{Name: "gonest.sid", Value: sign(id, "old")}
	if a := do(t, http.DefaultClient, "GET", server.URL+"/profile", oldSigned); a.status != 200 {
		t.Fatalf("signed with the old secret: %d", a.status)
	}
	// The bare id, or another secret's signature: not adopted.
	for _, forged := range []string{id, sign(id, "other"), "s%3A" + id + ".AAAA"} {
		if a := do(t, http.DefaultClient, "GET", server.URL+"/profile", &http.Cookie{Name: "gonest.sid", Value: forged}); a.status != 401 {
			t.Fatalf("forged %q: %d", forged, a.status)
		}
	}
}

func TestAStoreThatFailsAnswers503(t *testing.T) {
	d := startDaemon(t)
	store := connect(t, d)
	server := app(t, SessionOptions{Store: store}, controller())
	client := browser(t)
	do(t, client, "POST", server.URL+"/login", nil)
	d.kill()

	for _, path := range []string{"/profile", "/cart"} {
		a := do(t, client, "POST", server.URL+path, nil)
		if a.status != 503 || !strings.Contains(a.body, `"statusCode":503`) {
			t.Fatalf("%s with the daemon down: %d %s", path, a.status, a.body)
		}
	}
	// Without a cookie, a request that stores something fails at its save.
	if a := do(t, http.DefaultClient, "POST", server.URL+"/cart", nil); a.status != 503 || len(a.cookies) != 0 {
		t.Fatalf("a new session with the daemon down: %d, cookies %v", a.status, a.cookies)
	}
}

func TestDestroyRemovesTheSessionAndTheCookie(t *testing.T) {
	store := connect(t, startDaemon(t))
	server := app(t, SessionOptions{Store: store}, controller())
	client := browser(t)
	id := only(t, do(t, client, "POST", server.URL+"/login", nil).cookies, "gonest.sid").Value

	a := do(t, client, "POST", server.URL+"/destroy", nil)

	if c := only(t, a.cookies, "gonest.sid"); c.MaxAge >= 0 {
		t.Fatalf("the removal cookie: %+v", c)
	}
	if s, _ := store.Get(id); s != nil {
		t.Fatal("the session is still stored")
	}
}

func TestAnotherInstancesSaveIsKeptAndADestroyedSessionStaysDestroyed(t *testing.T) {
	store := connect(t, startDaemon(t))
	routes := controller()
	// While this request runs, another instance saves the session (or destroys it).
	routes["/race"] = func(w http.ResponseWriter, r *http.Request) {
		session := GetSession(r)
		if r.URL.Query().Get("destroy") != "" {
			_ = store.Destroy(session.ID)
		} else {
			_, _ = store.Update(context.Background(), session.ID, func(s *Session) error { return s.SetValue("theirs", 1) })
		}
		_ = session.SetValue("mine", 2)
	}
	server := app(t, SessionOptions{Store: store}, routes)
	client := browser(t)
	id := only(t, do(t, client, "POST", server.URL+"/login", nil).cookies, "gonest.sid").Value

	if a := do(t, client, "POST", server.URL+"/race", nil); a.status != 200 {
		t.Fatalf("race: %d %s", a.status, a.body)
	}
	session, _ := store.Get(id)
	for _, key := range []string{"theirs", "mine", "user_id"} {
		if _, ok := session.GetValue(key); !ok {
			t.Errorf("%s lost", key)
		}
	}

	a := do(t, client, "POST", server.URL+"/race?destroy=1", nil)
	if a.status != 200 {
		t.Fatalf("race with a destroy: %d", a.status)
	}
	if s, _ := store.Get(id); s != nil {
		t.Fatal("a session destroyed meanwhile came back")
	}
	if c := only(t, a.cookies, "gonest.sid"); c.MaxAge >= 0 {
		t.Fatalf("the cookie of a destroyed session: %+v", c)
	}
}
