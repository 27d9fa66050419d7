// go-app is the GoNest sessions controller (POST /login, GET /profile, POST /logout, and
// GET/PUT /data/{key}) on net/http, with its sessions in gonest-sessiond: the same routes and
// JSON as the Rust example-app and the express node-app, sharing their logins.
//
//	GO_APP_COOKIE_SECRET=... go-app -listen 127.0.0.1:3003 -store http://127.0.0.1:7070
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"example.invalid/gonestsession"
)

// userID is the user every login logs in, as in example-app.
const userID = 42

func main() {
	listen := flag.String("listen", "127.0.0.1:3003", "where the app listens")
	store := flag.String("store", "http://127.0.0.1:7070", "the gonest-sessiond daemon's URL")
	secretFlag := flag.String("cookie-secret", "", "sign the cookie as express-session does, with these secrets (comma-separated; the first signs); GO_APP_COOKIE_SECRET is preferred: a command line is visible to other users")
	flag.Parse()
	secret := os.Getenv("GO_APP_COOKIE_SECRET")
	if secret == "" {
		secret = *secretFlag
	}
	var secrets []string
	if secret != "" {
		secrets = strings.Split(secret, ",")
	}
	sessions, err := gonestsession.Connect(*store)
	if err != nil {
		log.Fatalf("go-app: %v", err)
	}
	defer sessions.Close()
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("go-app: cannot listen on %s: %v", *listen, err)
	}
	log.Printf("go-app listening addr=%s", listener.Addr())
	log.Fatal(http.Serve(listener, App(sessions, secrets)))
}

// App is the controller behind the session middleware.
func App(store gonestsession.SessionStore, secrets []string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/login", only(http.MethodPost, login))
	mux.HandleFunc("/profile", only(http.MethodGet, profile))
	mux.HandleFunc("/logout", only(http.MethodPost, logout))
	mux.HandleFunc("/data/", data)
	return gonestsession.NewSessionMiddleware(gonestsession.SessionOptions{
		Store:   store,
		Secrets: secrets,
	})(mux)
}

func only(method string, handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			fail(w, http.StatusMethodNotAllowed, "method not allowed")
			return
		}
		handler(w, r)
	}
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// fail answers the error JSON of example-app: {"statusCode": N, "message": "..."}.
func fail(w http.ResponseWriter, status int, message string) {
	reply(w, status, map[string]any{"statusCode": status, "message": message})
}

func login(w http.ResponseWriter, r *http.Request) {
	session := gonestsession.GetSession(r)
	// A new id at login, so that an id planted before it is worthless afterwards.
	session.RegenerateID()
	// The owner is the user: "log out everywhere" finds the user's sessions by it.
	session.SetOwner(fmt.Sprint(userID))
	if err := session.SetValue("user_id", userID); err != nil {
		fail(w, http.StatusInternalServerError, "could not store the session")
		return
	}
	if err := session.SetValue("role", "admin"); err != nil {
		fail(w, http.StatusInternalServerError, "could not store the session")
		return
	}
	reply(w, http.StatusOK, map[string]string{"status": "logged in"})
}

func profile(w http.ResponseWriter, r *http.Request) {
	session := gonestsession.GetSession(r)
	id, ok := session.GetValue("user_id")
	if !ok {
		fail(w, http.StatusUnauthorized, "not logged in")
		return
	}
	reply(w, http.StatusOK, map[string]any{"user_id": id})
}

func logout(w http.ResponseWriter, r *http.Request) {
	session := gonestsession.GetSession(r)
	session.Delete("user_id")
	session.Delete("role")
	// Not the user's any more: "log out everywhere" has nothing left to find here.
	session.SetOwner("")
	reply(w, http.StatusOK, map[string]string{"status": "logged out"})
}

// data is GET /data/{key} (one value, as JSON; 404 when there is none) and PUT /data/{key}
// with a JSON body (stored under key).
func data(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/data/")
	if key == "" || strings.Contains(key, "/") {
		fail(w, http.StatusNotFound, "not found")
		return
	}
	session := gonestsession.GetSession(r)
	switch r.Method {
	case http.MethodGet:
		value, ok := session.GetValue(key)
		if !ok {
			fail(w, http.StatusNotFound, "no such key in the session")
			return
		}
		reply(w, http.StatusOK, value)
	case http.MethodPut:
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		var value any
		if err == nil {
			decoder := json.NewDecoder(strings.NewReader(string(body)))
			decoder.UseNumber()
			err = decoder.Decode(&value)
		}
		if err != nil {
			fail(w, http.StatusBadRequest, "the body must be JSON")
			return
		}
		if err := session.SetValue(key, value); err != nil {
			fail(w, http.StatusBadRequest, "the session refused the value")
			return
		}
		reply(w, http.StatusOK, map[string]string{"status": "stored"})
	default:
		w.Header().Set("Allow", "GET, PUT")
		fail(w, http.StatusMethodNotAllowed, "method not allowed")
	}
}
