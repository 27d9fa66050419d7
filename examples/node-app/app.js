'use strict';

// examples/app's controller on express: POST /login, GET /profile, POST /logout, the user's
// devices (GET /sessions, POST /logout-everywhere), and GET/PUT /data/:key, with sessions in
// gonest-sessiond. With the same cookie name and secret as the Rust example-app, a user logged in
// on one is logged in on the other, and "log out everywhere" on either ends the user's sessions
// on both.

const express = require('express');
const session = require('express-session');
const { GonestSessiondStore } = require('gonest-sessiond-store');

function createApp({ daemonUrl, secret, token, timeout }) {
  // The owner is the user, as in the Rust app: "your devices" and "log out everywhere" find
  // sessions by it, whichever stack logged them in.
  const ownerOf = (sess) => (typeof sess.user_id === 'number' ? String(sess.user_id) : null);
  const store = new GonestSessiondStore({ url: daemonUrl, token, timeout, owner: ownerOf });
  const app = express();
  app.use(express.json({ strict: false }));
  app.use(session({
    name: 'gonest.sid',
    secret,
    store,
    resave: false,
    saveUninitialized: false,
    // GoNest's default lifetime, as the Rust app's login: 24 hours, kept across a browser restart.
    cookie: { httpOnly: true, sameSite: 'lax', path: '/', maxAge: 24 * 60 * 60 * 1000 },
  }));

  const unauthorized = (res) => res.status(401).json({ statusCode: 401, message: 'not logged in' });
  // Saved before answering: express-session saves while it ends the response, too late for a
  // failed save to change the status.
  const saveThen = (req, next, answer) => req.session.save((err) => (err ? next(err) : answer()));

  app.post('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user_id = 42;
      req.session.role = 'admin';
      saveThen(req, next, () => res.json({ status: 'logged in' }));
    });
  });

  app.get('/profile', (req, res) => {
    if (typeof req.session.user_id !== 'number') return unauthorized(res);
    res.json({ user_id: req.session.user_id });
  });

  app.post('/logout', (req, res, next) => {
    delete req.session.user_id;
    delete req.session.role;
    saveThen(req, next, () => res.json({ status: 'logged out' }));
  });

  app.get('/sessions', (req, res, next) => {
    const owner = ownerOf(req.session);
    if (!owner) return unauthorized(res);
    store.listByOwner(owner, (err, sessions) => {
      if (err) return next(err);
      res.json({
        sessions: sessions.map((s) => ({
          id: s.id.slice(0, 8),
          created_at: s.createdAt.toISOString(),
          expires_at: s.expiresAt.toISOString(),
          current: s.id === req.sessionID,
        })),
      });
    });
  });

  app.post('/logout-everywhere', (req, res, next) => {
    const owner = ownerOf(req.session);
    if (!owner) return unauthorized(res);
    store.destroyByOwner(owner, [req.sessionID], (err, destroyed) => {
      if (err) return next(err);
      res.json({ destroyed });
    });
  });

  app.get('/data/:key', (req, res) => {
    const key = req.params.key;
    if (key.startsWith('__') || !Object.hasOwn(req.session, key) || key === 'cookie') {
      return res.status(404).json({ statusCode: 404, message: 'no such key in the session' });
    }
    res.json(req.session[key]);
  });

  app.put('/data/:key', (req, res, next) => {
    const key = req.params.key;
    if (key.startsWith('__') || key === 'cookie' || key in session.Session.prototype) {
      return res.status(400).json({ statusCode: 400, message: 'the session refused the value' });
    }
    req.session[key] = req.body;
    saveThen(req, next, () => res.json({ status: 'stored' }));
  });

  // A store that is down (an error of the daemon's, with its gRPC status code) is a 503, as on
  // the Rust side; anything else, such as a value the session cannot hold, a 500.
  app.use((err, req, res, next) => {
    if (res.headersSent) return next(err);
    if (typeof err.code === 'number') {
      return res.status(503).json({ statusCode: 503, message: 'session store unavailable' });
    }
    res.status(500).json({ statusCode: 500, message: 'the session could not be saved' });
  });

  return { app, store };
}

module.exports = { createApp };

if (require.main === module) {
  const secret = process.env.NODE_APP_COOKIE_SECRET;
  if (!secret) {
    console.error('set NODE_APP_COOKIE_SECRET (the Rust example-app\'s EXAMPLE_APP_COOKIE_SECRET)');
    process.exit(2);
  }
  const { app } = createApp({
    daemonUrl: process.env.NODE_APP_STORE || 'http://127.0.0.1:7070',
    secret: secret.split(','),
    token: process.env.NODE_APP_STORE_TOKEN,
  });
  const port = Number(process.env.PORT || 3003);
  app.listen(port, '127.0.0.1', () => console.error(`node-app listening on 127.0.0.1:${port}`));
}
