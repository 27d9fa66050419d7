'use strict';

// One login across three stacks on one daemon and one cookie secret: the Rust example-app, the
// Go go-app (examples/go-app, built by its build.sh to GO_APP_BIN) and this express app. A login
// on any one is seen by the other two, a value set on one reads back on the others, and a logout
// on another makes all three answer 401.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { createApp } = require('../app');
const { SECRET, start, stopAll, call } = require('./helpers');

const stacks = {};
let nodeServer;
let nodeStore;

before(async () => {
  if (!process.env.GO_APP_BIN) {
    throw new Error('set GO_APP_BIN to go-app built by `bash examples/go-app/build.sh OUTPUT`');
  }
  const daemon = await start('gonest-sessiond', ['--listen', '127.0.0.1:0', '--shutdown-drain', '0s']);
  const store = `http://${daemon.addr}`;
  const rust = await start('example-app', ['--listen', '127.0.0.1:0', '--store', store], {
    EXAMPLE_APP_COOKIE_SECRET: SECRET,
  });
  stacks.rust = `http://${rust.addr}`;
  const go = await start(process.env.GO_APP_BIN, ['-listen', '127.0.0.1:0', '-store', store], {
    GO_APP_COOKIE_SECRET: SECRET,
  });
  stacks.go = `http://${go.addr}`;
  const node = createApp({ daemonUrl: store, secret: [SECRET], timeout: 1500 });
  nodeStore = node.store;
  await new Promise((resolve) => {
    nodeServer = node.app.listen(0, '127.0.0.1', resolve);
  });
  stacks.node = `http://127.0.0.1:${nodeServer.address().port}`;
});

after(async () => {
  if (nodeServer) nodeServer.close();
  if (nodeStore) nodeStore.close();
  await stopAll();
});

const names = ['rust', 'go', 'node'];

for (const [i, origin] of names.entries()) {
  const others = names.filter((name) => name !== origin);
  const logoutOn = names[(i + 1) % names.length];
  test(`a login on ${origin} is seen on ${others.join(' and ')}; a logout on ${logoutOn} ends it on all three`, async () => {
    const login = await call(stacks[origin], 'POST', '/login');
    assert.equal(login.status, 200, JSON.stringify(login.json));
    assert.deepEqual(login.json, { status: 'logged in' });
    const cookie = login.cookie;
    assert.match(cookie, /^gonest\.sid=s%3A[A-Za-z0-9_-]+\./, 'a signed cookie');

    for (const name of others) {
      const profile = await call(stacks[name], 'GET', '/profile', cookie);
      assert.deepEqual([profile.status, profile.json], [200, { user_id: 42 }], name);
    }

    // A value set on each stack reads back on the other two.
    for (const [j, name] of names.entries()) {
      const value = { set_on: name, n: j, list: [1, 'two'] };
      const stored = await call(stacks[name], 'PUT', `/data/from_${name}`, cookie, value);
      assert.equal(stored.status, 200, `${name}: ${JSON.stringify(stored.json)}`);
      for (const reader of names.filter((other) => other !== name)) {
        const read = await call(stacks[reader], 'GET', `/data/from_${name}`, cookie);
        assert.deepEqual([read.status, read.json], [200, value], `${name} -> ${reader}`);
      }
    }

    const logout = await call(stacks[logoutOn], 'POST', '/logout', cookie);
    assert.equal(logout.status, 200);
    for (const name of names) {
      const profile = await call(stacks[name], 'GET', '/profile', cookie);
      assert.deepEqual([profile.status, profile.json], [401, { statusCode: 401, message: 'not logged in' }], name);
    }
  });
}
