'use strict';

// The package as a user gets it: `npm pack` in a copy of this folder (its prepack script puts
// the .proto in the package), the tarball installed into an empty folder, and a Save and a Get
// through it against the real gonest-sessiond. The binary comes from GONEST_BIN_DIR (default:
// `debug` in cargo's target directory).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startDaemon, stopDaemon } = require('./daemon');

const PROTO = path.join(__dirname, '..', '..', '..', 'proto', 'proto', 'gonest', 'session', 'v1', 'session.proto');

let daemon;
let url;
let scratch;

before(async () => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'gonest-store-package-'));
  ({ child: daemon, url } = await startDaemon());
});

after(() => {
  stopDaemon(daemon);
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], {
  cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
});

test('the packed package installs into an empty folder and keeps sessions there', () => {
  // The repository's layout, without node_modules: clients/node and the .proto.
  const source = path.join(scratch, 'repo', 'clients', 'node');
  fs.mkdirSync(path.join(scratch, 'repo', 'proto', 'proto', 'gonest', 'session', 'v1'), { recursive: true });
  fs.copyFileSync(PROTO, path.join(scratch, 'repo', 'proto', 'proto', 'gonest', 'session', 'v1', 'session.proto'));
  fs.cpSync(path.join(__dirname, '..'), source, {
    recursive: true,
    filter: (from) => !from.split(path.sep).includes('node_modules'),
  });
  const [packed] = JSON.parse(npm(['pack', '--json', '--pack-destination', scratch], source));
  const files = packed.files.map((file) => file.path).sort();
  assert.deepEqual(files, ['README.md', 'index.d.ts', 'index.js', 'package.json', 'proto/gonest/session/v1/session.proto']);
  assert.ok(!fs.existsSync(path.join(source, 'proto')), 'postpack removes the copy');

  const app = path.join(scratch, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'an-app', private: true }));
  npm(['install', '--prefer-offline', path.join(scratch, packed.filename)], app);
  assert.ok(fs.existsSync(path.join(app, 'node_modules', 'express-session')), 'the peer dependency is installed');

  const script = `
    const { GonestSessiondStore } = require('gonest-sessiond-store');
    const store = new GonestSessiondStore({ url: process.env.GONEST_URL });
    const sess = { cookie: { originalMaxAge: 60000, expires: null, httpOnly: true, path: '/' }, user: 'ada', n: 7 };
    store.set('packaged-session', sess, (err) => {
      if (err) throw err;
      store.get('packaged-session', (err, back) => {
        if (err) throw err;
        process.stdout.write(JSON.stringify({ user: back.user, n: back.n }));
        store.close();
      });
    });`;
  const out = execFileSync(process.execPath, ['-e', script], {
    cwd: app, encoding: 'utf8', env: { ...process.env, GONEST_URL: url }, timeout: 20000,
  });
  assert.deepEqual(JSON.parse(out), { user: 'ada', n: 7 });
});
