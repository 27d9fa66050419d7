'use strict';

// One login across two stacks: the real gonest-sessiond, the Rust example-app and this express
// app, all on 127.0.0.1 with ports chosen by the OS. The binaries come from GONEST_BIN_DIR
// (default: `debug` in cargo's target directory; build them with
// `cargo build -p gonest-sessiond -p example-app`).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { createApp } = require('../app');
const { SECRET, start, stop, stopAll, call } = require('./helpers');

let daemon;
let rust;
let node;
let nodeServer;
let nodeStore;

before(async () => {
  daemon = await start('gonest-sessiond', ['--listen', '127.0.0.1:0', '--shutdown-drain', '0s']);
  const rustApp = await start(
    'example-app',
    ['--listen', '127.0.0.1:0', '--store', `http://${daemon.addr}`],
    { EXAMPLE_APP_COOKIE_SECRET: SECRET },
  );
  rust = `http://${rustApp.addr}`;
  const { app, store } = createApp({ daemonUrl: `http://${daemon.addr}`, secret: [SECRET], timeout: 1500 });
  nodeStore = store;
  await new Promise((resolve) => {
    nodeServer = app.listen(0, '127.0.0.1', resolve);
  });
  node = `http://127.0.0.1:${nodeServer.address().port}`;
});

after(async () => {
  if (nodeServer) nodeServer.close();
  if (nodeStore) nodeStore.close();
  await stopAll();
});

async function login(base) {
  const response = await call(base, 'POST', '/login');
  assert.equal(response.status, 200);
  assert.ok(response.cookie, 'login sets the cookie');
  return response.cookie;
}

test('a login on Node is seen on Rust, keys travel both ways, a logout on Rust ends it on Node', async () => {
  const cookie = await login(node);
  assert.match(cookie, /^gonest\.sid=s%3A[A-Za-z0-9_-]{32}\./, 'express-session\'s signed cookie');
  assert.deepEqual((await call(rust, 'GET', '/profile', cookie)).json, { user_id: 42 });

  const stored = await call(rust, 'PUT', '/data/color', cookie, 'blue');
  assert.equal(stored.status, 200);
  assert.deepEqual((await call(node, 'GET', '/data/color', cookie)).json, 'blue');
  await call(node, 'PUT', '/data/size', cookie, { eu: 42 });
  assert.deepEqual((await call(rust, 'GET', '/data/size', cookie)).json, { eu: 42 });

  assert.equal((await call(rust, 'POST', '/logout', cookie)).status, 200);
  const profile = await call(node, 'GET', '/profile', cookie);
  assert.equal(profile.status, 401);
  assert.deepEqual(profile.json, { statusCode: 401, message: 'not logged in' });
});

test('a login on Rust is seen on Node, and Rust\'s own entries survive a Node save', async () => {
  const cookie = await login(rust);
  assert.match(cookie, /^gonest\.sid=s%3A[A-Za-z0-9_-]{43}\./);
  assert.deepEqual((await call(node, 'GET', '/profile', cookie)).json, { user_id: 42 });
  await call(node, 'PUT', '/data/color', cookie, 'green');
  // The Rust login's owner and expiry are still there: "your devices" lists it.
  const listed = await call(rust, 'GET', '/sessions', cookie);
  assert.equal(listed.status, 200);
  assert.equal(listed.json.sessions.length >= 1, true);
  assert.deepEqual((await call(rust, 'GET', '/data/color', cookie)).json, 'green');
});

test('50 concurrent requests alternating between the stacks, each setting its own key, all land', async () => {
  const cookie = await login(node);
  const requests = [];
  for (let i = 0; i < 50; i += 1) {
    const base = i % 2 === 0 ? node : rust;
    requests.push(call(base, 'PUT', `/data/k${i}`, cookie, i));
  }
  for (const response of await Promise.all(requests)) {
    assert.equal(response.status, 200, JSON.stringify(response.json));
  }
  for (let i = 0; i < 50; i += 1) {
    const base = i % 2 === 0 ? rust : node;
    assert.deepEqual((await call(base, 'GET', `/data/k${i}`, cookie)).json, i, `k${i}`);
  }
});

test('a tampered signature is no session on either stack', async () => {
  const cookie = await login(node);
  const last = cookie.at(-1);
  const tampered = cookie.slice(0, -1) + (last === 'A' ? 'B' : 'A');
  for (const base of [node, rust]) {
    assert.equal((await call(base, 'GET', '/profile', tampered)).status, 401, base);
    assert.equal((await call(base, 'GET', '/profile', cookie)).status, 200, base);
  }
  const unsigned = `gonest.sid=${decodeURIComponent(cookie.split('=')[1]).slice(2).split('.')[0]}`;
  for (const base of [node, rust]) {
    assert.equal((await call(base, 'GET', '/profile', unsigned)).status, 401, base);
  }
});

test('with the daemon down both stacks answer 503 within 3 s, and work again once it is back', async () => {
  const cookie = await login(node);
  const addr = daemon.addr;
  await stop(daemon.child);
  for (const base of [node, rust]) {
    const started = Date.now();
    const down = await call(base, 'GET', '/profile', cookie);
    assert.equal(down.status, 503, base);
    assert.ok(Date.now() - started < 3000, `${base} answered after ${Date.now() - started} ms`);
    assert.equal((await call(base, 'POST', '/login')).status, 503, base);
  }

  daemon = await start('gonest-sessiond', ['--listen', addr, '--shutdown-drain', '0s']);
  // The daemon keeps sessions in memory: users log in again, on the same store, no restart.
  const deadline = Date.now() + 5000;
  let again;
  do {
    again = await call(node, 'POST', '/login');
  } while (again.status !== 200 && Date.now() < deadline);
  assert.equal(again.status, 200);
  assert.deepEqual((await call(rust, 'GET', '/profile', again.cookie)).json, { user_id: 42 });
});

test('a session destroyed meanwhile is not revived by a slow save', async () => {
  const cookie = await login(node);
  const sid = decodeURIComponent(cookie.split('=')[1]).slice(2).split('.')[0];
  const get = () => new Promise((resolve, reject) => nodeStore.get(sid, (e, s) => (e ? reject(e) : resolve(s))));
  const slow = await get();
  await new Promise((resolve, reject) => nodeStore.destroy(sid, (e) => (e ? reject(e) : resolve())));
  slow.late = true;
  await new Promise((resolve, reject) => nodeStore.set(sid, slow, (e) => (e ? reject(e) : resolve())));
  assert.equal(await get(), null);
  assert.equal((await call(rust, 'GET', '/profile', cookie)).status, 401);
});

test('"log out everywhere" on Rust ends a Node login, and on Node ends a Rust login', async () => {
  for (const [loginOn, revokeOn] of [[node, rust], [rust, node]]) {
    const other = await login(loginOn);
    const current = await login(revokeOn);
    assert.equal((await call(loginOn, 'GET', '/profile', other)).status, 200);
    const listed = await call(revokeOn, 'GET', '/sessions', current);
    assert.equal(listed.status, 200);
    assert.ok(listed.json.sessions.length >= 2, JSON.stringify(listed.json));
    const revoked = await call(revokeOn, 'POST', '/logout-everywhere', current);
    assert.equal(revoked.status, 200);
    assert.ok(revoked.json.destroyed >= 1, JSON.stringify(revoked.json));
    for (const base of [node, rust]) {
      assert.equal((await call(base, 'GET', '/profile', other)).status, 401, `${base}: the other login`);
      assert.equal((await call(base, 'GET', '/profile', current)).status, 200, `${base}: the caller's own`);
    }
  }
});

test('a Rust entry named cookie, or holding no JSON for Node, neither locks Node out nor is lost', async () => {
  const cookie = await login(rust);
  assert.equal((await call(rust, 'PUT', '/data/cookie', cookie, 5)).status, 200);
  assert.equal((await call(rust, 'PUT', '/data/save', cookie, { maxAge: 1 })).status, 200);
  assert.deepEqual((await call(node, 'GET', '/profile', cookie)).json, { user_id: 42 });
  assert.equal((await call(node, 'PUT', '/data/color', cookie, 'red')).status, 200);
  assert.deepEqual((await call(rust, 'GET', '/data/cookie', cookie)).json, 5, 'kept through the Node save');
  assert.deepEqual((await call(rust, 'GET', '/data/save', cookie)).json, { maxAge: 1 });
  assert.deepEqual((await call(rust, 'GET', '/data/color', cookie)).json, 'red');
});

test('with two session cookies, both stacks take the first', async () => {
  const first = await login(node);
  const second = await login(rust);
  const tampered = first.slice(0, -1) + (first.at(-1) === 'A' ? 'B' : 'A');
  const value = (c) => c.split('=')[1];
  for (const base of [node, rust]) {
    const both = `gonest.sid=${value(first)}; gonest.sid=${value(second)}`;
    const answer = await call(base, 'GET', '/data/color', both);
    assert.notEqual(answer.status, 401, base);
    const badFirst = `gonest.sid=${value(tampered)}; gonest.sid=${value(second)}`;
    assert.equal((await call(base, 'GET', '/profile', badFirst)).status, 401, `${base}: a bad first cookie`);
    assert.equal((await call(base, 'GET', '/profile', both)).status, 200, base);
  }
  // Which one was taken: a key set through both cookies lands in the first cookie's session.
  const both = `gonest.sid=${value(first)}; gonest.sid=${value(second)}`;
  await call(rust, 'PUT', '/data/which', both, 'rust');
  await call(node, 'PUT', '/data/which2', both, 'node');
  assert.deepEqual((await call(node, 'GET', '/data/which', first)).json, 'rust');
  assert.deepEqual((await call(rust, 'GET', '/data/which2', first)).json, 'node');
  assert.equal((await call(rust, 'GET', '/data/which', second)).status, 404);
});
