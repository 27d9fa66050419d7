'use strict';

// The store against the real gonest-sessiond, on 127.0.0.1 with a port chosen by the OS. The
// binary comes from GONEST_BIN_DIR (default: `debug` in cargo's target directory; build it with
// `cargo build -p gonest-sessiond`).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { GonestSessiondStore, COOKIE_KEY } = require('..');
const { startDaemon, stopDaemon } = require('./daemon');


let daemon;
let url;
const warnings = [];
let store;

before(async () => {
  ({ child: daemon, url } = await startDaemon());
  store = new GonestSessiondStore({
    url,
    owner: (sess) => (typeof sess.user === 'string' ? sess.user : null),
    warn: (message) => warnings.push(message),
  });
});

after(() => {
  if (store) store.close();
  stopDaemon(daemon);
});

const call = (method, request) => new Promise((resolve, reject) => {
  store.call(method, request, (err, answer) => (err ? reject(err) : resolve(answer)));
});
const get = (sid) => new Promise((resolve, reject) => store.get(sid, (e, s) => (e ? reject(e) : resolve(s))));
const set = (sid, sess) => new Promise((resolve) => store.set(sid, sess, (e) => resolve(e)));
const newSession = (fields) => ({ cookie: { originalMaxAge: 60000, expires: null, httpOnly: true, path: '/' }, ...fields });
const json = (value) => Buffer.from(JSON.stringify(value));

/** The entries stored for `sid`, as strings. */
async function stored(sid) {
  const answer = await call('Get', { id: sid });
  if (!answer.session) return null;
  const out = {};
  const raw = {};
  for (const [key, value] of Object.entries(answer.session.data)) {
    out[key] = Buffer.from(value).toString('utf8');
    raw[key] = Buffer.from(value);
  }
  return { data: out, raw, owner: answer.session.owner };
}

for (const [name, make] of [
  ['a BigInt', () => 10n],
  ['a circular object', () => { const o = { a: 1 }; o.self = o; return o; }],
]) {
  test(`${name} in a session is the save's error, and the session's next save goes on`, async () => {
    const sid = `encode-${name.replace(/\W/g, '')}`;
    assert.equal(await set(sid, newSession({ n: 1 })), null);
    const sess = await get(sid);
    sess.bad = make();
    const failed = await set(sid, sess);
    assert.ok(failed instanceof TypeError, String(failed));
    // Once more while the first failure is fresh: each save answers, none is stuck behind it.
    assert.ok((await set(sid, sess)) instanceof TypeError);
    delete sess.bad;
    sess.n = 2;
    assert.equal(await set(sid, sess), null);
    assert.equal((await get(sid)).n, 2);
  });
}

test('entries express-session cannot take are skipped with a warning and kept as stored', async () => {
  const sid = 'undecodable';
  const data = {
    notjson: Buffer.from([0xff, 0xfe, 0x01]),
    cookie: json(5),
    save: json('a value under a method\'s name'),
    fine: json({ a: 1 }),
    __rust: json('reserved'),
  };
  await call('Save', { session: { id: sid, data }, ttl: { seconds: '60', nanos: 0 } });
  warnings.length = 0;
  const sess = await get(sid);
  assert.deepEqual(sess.fine, { a: 1 });
  assert.equal(sess.notjson, undefined);
  assert.equal(typeof sess.cookie, 'object', 'express-session\'s own cookie, not the entry');
  assert.equal(typeof sess.save, 'undefined');
  assert.equal(warnings.length, 3, warnings.join('\n'));
  assert.ok(warnings.every((w) => !w.includes(sid)), 'no session id in a warning');
  await get(sid);
  assert.equal(warnings.length, 3, 'each warning once');

  sess.more = true;
  assert.equal(await set(sid, sess), null);
  const after = await stored(sid);
  assert.deepEqual(after.raw.notjson, Buffer.from([0xff, 0xfe, 0x01]), 'as stored');
  assert.equal(after.data.cookie, '5');
  assert.equal(after.data.save, JSON.stringify('a value under a method\'s name'));
  assert.equal(after.data.__rust, '"reserved"');
  assert.equal(after.data.more, 'true');
  assert.ok(after.data[COOKIE_KEY], 'express-session\'s cookie under its own key');

  // A value the app sets under the name of one it could not read replaces it.
  const again = await get(sid);
  again.notjson = 'now JSON';
  assert.equal(await set(sid, again), null);
  assert.equal((await stored(sid)).data.notjson, '"now JSON"');
});

test('a bad express cookie entry gives the session a new cookie, not an error', async () => {
  const sid = 'bad-cookie';
  await call('Save', {
    session: { id: sid, data: { [COOKIE_KEY]: json('not an object'), user: json('u') } },
    ttl: { seconds: '60', nanos: 0 },
  });
  const sess = await get(sid);
  assert.equal(sess.user, 'u');
  assert.equal(typeof sess.cookie, 'object');
  assert.equal(await set(sid, sess), null);
});

test('the owner option sets the owner; listByOwner and destroyByOwner reach the sessions', async () => {
  for (const sid of ['dev-a', 'dev-b', 'dev-c']) {
    assert.equal(await set(sid, newSession({ user: 'alice' })), null);
  }
  assert.equal((await stored('dev-a')).owner, 'alice');
  const listed = await new Promise((resolve, reject) => store.listByOwner('alice', (e, l) => (e ? reject(e) : resolve(l))));
  assert.deepEqual(listed.map((s) => s.id).sort(), ['dev-a', 'dev-b', 'dev-c']);
  assert.ok(listed[0].expiresAt instanceof Date && listed[0].expiresAt > new Date());
  const destroyed = await new Promise((resolve, reject) => store.destroyByOwner('alice', ['dev-a'], (e, n) => (e ? reject(e) : resolve(n))));
  assert.equal(destroyed, 2);
  assert.ok(await get('dev-a'));
  assert.equal(await get('dev-b'), null);

  // Logged out: no user, no owner.
  const sess = await get('dev-a');
  delete sess.user;
  assert.equal(await set('dev-a', sess), null);
  assert.equal((await stored('dev-a')).owner, '');
});
