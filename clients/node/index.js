'use strict';

// gonest-sessiond-store: an express-session store kept by gonest-sessiond.
//
// Sessions are encoded as the Rust layer (crate gonest-session) encodes them: one data entry per
// top-level key, each value its JSON bytes. express-session's own `cookie` object is kept under
// the reserved key `__express.cookie`, which the Rust layer ignores; keys beginning with `__`
// written by the Rust layer (such as its expiry) are kept as they are. So a session written by
// one stack is read and changed by the other.
//
// An entry this store cannot hand to express-session is kept as it is stored and written back
// unchanged: a value that is not JSON, and an entry under a name express-session's session
// object uses itself (`cookie`, `id`, `req` and its methods), which would otherwise clobber it or
// be dropped by it.
//
// Saves are conditional on the version read by `get` (compare-and-swap). When another request
// saved the session meanwhile (ABORTED), the store reloads it and applies only this request's
// changed keys on top; when it was destroyed meanwhile, the save is dropped rather than bringing
// the session back.

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { Store, Session } = require('express-session');

// The contract: the copy `npm pack` puts in the package (scripts/copy-proto.js), or in the
// repository, the .proto itself.
const PROTO_IN_PACKAGE = path.join(__dirname, 'proto', 'gonest', 'session', 'v1', 'session.proto');
const PROTO_IN_REPOSITORY = path.join(__dirname, '..', '..', 'proto', 'proto', 'gonest', 'session', 'v1', 'session.proto');
const PROTO = fs.existsSync(PROTO_IN_PACKAGE) ? PROTO_IN_PACKAGE : PROTO_IN_REPOSITORY;

const COOKIE_KEY = '__express.cookie';
// Where the store keeps what it read, on the session object itself: express-session copies a
// session's enumerable properties into the `req.session` it later hands to `set`.
const META = '__gonest';
const DAY_MS = 24 * 60 * 60 * 1000;
const SAVE_ATTEMPTS = 12;
const WARNINGS = 100;

let service;
function loadService() {
  if (!service) {
    const definition = protoLoader.loadSync(PROTO, {
      keepCase: true,
      longs: String,
      defaults: true,
      oneofs: true,
    });
    service = grpc.loadPackageDefinition(definition).gonest.session.v1.SessionStore;
  }
  return service;
}

/** Whether express-session's session object uses `key` itself, so that an entry of that name cannot be its. */
function reserved(key) {
  return key === 'cookie' || key === 'id' || key === 'req' || key in Session.prototype;
}

function durationMs(ms) {
  const whole = Math.max(1, Math.ceil(ms));
  return { seconds: String(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1e6 };
}

class GonestSessiondStore extends Store {
  /**
   * @param {object} options
   * @param {string} [options.url] the daemon, `http://host:port` or `https://host:port`
   *   (default `http://127.0.0.1:7070`)
   * @param {string} [options.token] the bearer token, when the daemon has --auth-token-file
   * @param {Buffer|string} [options.ca] a PEM CA certificate for an https daemon with a private CA
   * @param {number} [options.ttl] session lifetime in seconds (default: the cookie's maxAge, else 24 h)
   * @param {number} [options.timeout] call timeout in ms (default 2000)
   * @param {function(object): (string|null|undefined)} [options.owner] the owner of a session
   *   (a user id), called with the session at every save: a string is its owner, anything else
   *   none. Without it, a session keeps the owner it was read with.
   * @param {function(string): void} [options.warn] where warnings go (default console.warn);
   *   each is given once per process
   */
  constructor(options = {}) {
    super();
    const url = new URL(options.url || 'http://127.0.0.1:7070');
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new Error(`gonest-sessiond-store: the url must be http:// or https://, not ${url.protocol}`);
    }
    const credentials = url.protocol === 'https:'
      ? grpc.credentials.createSsl(options.ca ? Buffer.from(options.ca) : null)
      : grpc.credentials.createInsecure();
    const Client = loadService();
    this.client = new Client(url.host, credentials, {
      // Back within a second of the daemon's return, rather than after a long backoff.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 1000,
    });
    // The saves of this process to one session, one after another (see `set`).
    this.writing = new Map();
    this.token = options.token;
    this.ttl = options.ttl;
    this.timeout = options.timeout || 2000;
    if (options.owner !== undefined && typeof options.owner !== 'function') {
      throw new TypeError('gonest-sessiond-store: the owner option must be a function of the session');
    }
    this.ownerOf = options.owner;
    // Each warning once per process (a session read on every request would repeat it on every
    // request), and at most WARNINGS different ones.
    const sink = options.warn || ((message) => console.warn(message));
    const warned = new Set();
    this.warn = (message) => {
      if (warned.has(message) || warned.size >= WARNINGS) return;
      warned.add(message);
      sink(message);
    };
  }

  call(method, request, callback) {
    const metadata = new grpc.Metadata();
    if (this.token) {
      metadata.set('authorization', `Bearer ${this.token}`);
    }
    try {
      this.client[method](request, metadata, { deadline: Date.now() + this.timeout }, callback);
    } catch (err) {
      // A closed store: an error to the caller, never an exception thrown at the event loop.
      process.nextTick(callback, err);
    }
  }

  /** The session's lifetime in ms. */
  ttlMs(sess) {
    if (typeof this.ttl === 'number') {
      return this.ttl * 1000;
    }
    const maxAge = sess && sess.cookie && sess.cookie.maxAge;
    return typeof maxAge === 'number' && maxAge > 0 ? maxAge : DAY_MS;
  }

  get(sid, callback) {
    this.call('Get', { id: sid }, (err, answer) => {
      if (err) {
        return callback(err);
      }
      if (!answer.session) {
        return callback(null, null);
      }
      let sess;
      try {
        sess = decode(answer.session, this.warn);
      } catch (decodeErr) {
        return callback(decodeErr);
      }
      callback(null, sess);
    });
  }

  // Saves of one session from this process go one at a time, so that a conflict can only come
  // from another process: concurrent requests of one app would otherwise keep invalidating each
  // other's versions and run out of retries. Each save is bounded by the call timeout per try.
  set(sid, sess, callback = () => {}) {
    const previous = this.writing.get(sid) || Promise.resolve();
    const turn = previous.then(() => new Promise((resolve) => {
      let done = false;
      const finish = (err) => {
        if (done) return;
        done = true;
        resolve();
        callback(err || null);
      };
      try {
        this.save(sid, sess, finish);
      } catch (err) {
        // A value that does not encode (a BigInt, a cycle): this save's error, and the next save
        // of the session goes on.
        finish(err);
      }
    }));
    this.writing.set(sid, turn);
    turn.then(() => {
      if (this.writing.get(sid) === turn) this.writing.delete(sid);
    });
  }

  save(sid, sess, callback) {
    const meta = sess[META];
    const data = encode(sess);
    const ttl = durationMs(this.ttlMs(sess));
    const owner = this.ownerOf ? ownerName(this.ownerOf(sess)) : (meta ? meta.owner : '');
    const save = (expected, entries, attempt) => {
      const request = {
        session: { id: sid, data: entries, owner },
        expected_version: String(expected),
        ttl,
      };
      this.call('Save', request, (err, saved) => {
        if (!err) {
          let opaque = meta ? meta.opaque : [];
          if (entries !== data) {
            // Saved on top of another request's version: the session object takes on what was
            // stored, so that a later save of it (express-session saves again after an
            // explicit save) neither drops nor undoes the other request's keys.
            opaque = adopt(sess, entries, this.warn);
          }
          sess[META] = { version: saved.version, original: snapshot(entries), owner, opaque };
          return callback(null);
        }
        if (err.code !== grpc.status.ABORTED || !meta || attempt >= SAVE_ATTEMPTS) {
          return callback(err);
        }
        // Saved by another request meanwhile: apply this request's changes to the newer one.
        this.call('Get', { id: sid }, (getErr, answer) => {
          if (getErr) {
            return callback(getErr);
          }
          if (!answer.session) {
            // Destroyed meanwhile (a logout): do not bring it back.
            return callback(null);
          }
          const merged = rebase(answer.session.data, meta.original, data);
          const wait = crypto.randomInt(0, Math.min(16, 2 ** attempt) * 1000) / 1000;
          setTimeout(() => save(answer.session.version, merged, attempt + 1), wait);
        });
      });
    };
    save(meta ? meta.version : 0, data, 1);
  }

  touch(sid, sess, callback = () => {}) {
    this.call('Touch', { id: sid, ttl: durationMs(this.ttlMs(sess)) }, (err) => callback(err || null));
  }

  destroy(sid, callback = () => {}) {
    this.call('Destroy', { id: sid }, (err) => callback(err || null));
  }

  /**
   * The live sessions of `owner` ("your devices"), oldest first, without their data: each as
   * `{ id, createdAt, expiresAt, owner }` (times as Dates).
   */
  listByOwner(owner, callback) {
    this.call('ListByOwner', { owner, with_data: false }, (err, answer) => {
      if (err) return callback(err);
      const time = (ts) => new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
      callback(null, answer.sessions.map((s) => ({
        id: s.id,
        createdAt: time(s.created_at),
        expiresAt: time(s.expires_at),
        owner: s.owner,
      })));
    });
  }

  /**
   * Destroys every session of `owner` but those whose ids are in `exceptIds` ("log out
   * everywhere else"), on every stack sharing the daemon; calls back with how many it destroyed.
   */
  destroyByOwner(owner, exceptIds, callback) {
    this.call('DestroyByOwner', { owner, except_ids: exceptIds || [] }, (err, answer) => {
      if (err) return callback(err);
      callback(null, Number(answer.destroyed));
    });
  }

  /** Closes the connection to the daemon. */
  close() {
    this.client.close();
  }
}

/** What `owner` returned, as the wire's owner: a string, or '' for none. */
function ownerName(owner) {
  return typeof owner === 'string' ? owner : '';
}

/**
 * The app's entries of wire `data` set on `sess`; returns the names of those kept as stored
 * instead (reserved by express-session, or not JSON), each with a warning.
 */
function readEntries(sess, data, warn) {
  const opaque = [];
  for (const [key, value] of Object.entries(data)) {
    if (key.startsWith('__')) {
      continue;
    }
    if (reserved(key)) {
      warn(`gonest-sessiond-store: the entry "${key}" has a name express-session uses; kept as stored`);
      opaque.push(key);
      continue;
    }
    try {
      sess[key] = JSON.parse(Buffer.from(value).toString('utf8'));
    } catch {
      warn(`gonest-sessiond-store: the entry "${key}" is not JSON; kept as stored`);
      opaque.push(key);
    }
  }
  return opaque;
}

/** express-session's cookie as the store wrote it, or null when the entry is missing or bad. */
function readCookie(data, warn) {
  const value = data[COOKIE_KEY];
  if (value === undefined) {
    return null;
  }
  try {
    const cookie = JSON.parse(Buffer.from(value).toString('utf8'));
    if (cookie !== null && typeof cookie === 'object' && !Array.isArray(cookie)) {
      return cookie;
    }
  } catch {
    // Warned below.
  }
  warn(`gonest-sessiond-store: the entry "${COOKIE_KEY}" is not a cookie object; the session gets a new one`);
  return null;
}

/** A wire session as an express-session object, with what set() needs to save it. */
function decode(session, warn) {
  const sess = {};
  const opaque = readEntries(sess, session.data, warn);
  // Written by the Rust layer, or unreadable: express-session needs a cookie object to load the
  // session. A browser-session cookie; express-session's own cookie options apply when it sets
  // one.
  sess.cookie = readCookie(session.data, warn)
    || { originalMaxAge: null, expires: null, httpOnly: true, path: '/' };
  // The Rust layer's reserved entries, and those kept as stored, are carried through `original`
  // and written back as read.
  sess[META] = {
    version: session.version,
    original: snapshot(session.data),
    owner: session.owner,
    opaque,
  };
  return sess;
}

/**
 * An express-session object as wire data: its keys, the cookie, the reserved entries read, and
 * the entries kept as stored (unless the app has since set a value of that name).
 */
function encode(sess) {
  const data = {};
  const meta = sess[META];
  if (meta) {
    for (const [key, value] of Object.entries(meta.original)) {
      const carried = key.startsWith('__') && key !== COOKIE_KEY;
      const kept = (meta.opaque || []).includes(key) && (reserved(key) || !Object.hasOwn(sess, key));
      if (carried || kept) {
        data[key] = Buffer.from(value, 'base64');
      }
    }
  }
  for (const key of Object.keys(sess)) {
    if (key === META || key.startsWith('__') || (key !== 'cookie' && reserved(key))) {
      continue;
    }
    // Throws on a value JSON cannot hold (a BigInt, a cycle): set() hands that to the caller.
    const json = JSON.stringify(sess[key]);
    if (json === undefined) {
      continue;
    }
    data[key === 'cookie' ? COOKIE_KEY : key] = Buffer.from(json, 'utf8');
  }
  return data;
}

/**
 * Sets the app's keys of `sess` to those of `data`, removing the ones it does not hold; returns
 * the names kept as stored (see readEntries).
 */
function adopt(sess, data, warn) {
  for (const key of Object.keys(sess)) {
    if (key !== META && key !== 'cookie' && !key.startsWith('__') && !(key in data)) {
      delete sess[key];
    }
  }
  return readEntries(sess, data, warn);
}

/** Data as base64 strings, to compare and to carry on the session object. */
function snapshot(data) {
  const out = {};
  for (const [key, value] of Object.entries(data)) {
    out[key] = Buffer.from(value).toString('base64');
  }
  return out;
}

/** `fresh` with the entries that differ between `original` and `mine` set (or removed) as in `mine`. */
function rebase(fresh, original, mine) {
  const merged = { ...fresh };
  const keys = new Set([...Object.keys(original), ...Object.keys(mine)]);
  for (const key of keys) {
    const before = original[key];
    const after = mine[key] === undefined ? undefined : Buffer.from(mine[key]).toString('base64');
    if (before === after) {
      continue;
    }
    if (after === undefined) {
      delete merged[key];
    } else {
      merged[key] = mine[key];
    }
  }
  return merged;
}

module.exports = { GonestSessiondStore, COOKIE_KEY };
