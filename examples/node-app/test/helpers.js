'use strict';

// What the interop tests share: starting the binaries cargo built, and calling an app as a
// browser would. The binaries come from GONEST_BIN_DIR (default: `debug` in cargo's target
// directory).

const { spawn } = require('node:child_process');
const path = require('node:path');

// Where cargo builds, as cargo itself says (CARGO_TARGET_DIR included).
const BIN_DIR = process.env.GONEST_BIN_DIR || path.join(JSON.parse(require('node:child_process')
  .execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: __dirname }))
  .target_directory, 'debug');
/** The cookie secret every app of a test shares. */
const SECRET = 'a shared secret: long and random in production';

/** Every process started, for `stopAll`. */
const children = [];

/** Starts a binary (a name in BIN_DIR, or a path) and resolves with the address it logs once it listens. */
function start(binary, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.resolve(BIN_DIR, binary), args, {
      env: { ...process.env, RUST_LOG: 'info', ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(child);
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`${binary} did not start: ${seen}`)), 30000);
    child.stderr.on('data', (chunk) => {
      // Without the terminal colours the log may carry.
      seen += chunk.toString().replace(/\x1b\[[0-9;]*m/g, '');
      const match = seen.match(/listening addr=(\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, addr: match[1] });
      }
    });
    child.on('exit', (code) => reject(new Error(`${binary} exited with ${code}: ${seen}`)));
  });
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGKILL');
  });
}

/** The session cookie a response sets (`gonest.sid=...`), if any. */
function setCookie(response) {
  const all = response.headers.getSetCookie ? response.headers.getSetCookie() : [response.headers.get('set-cookie') || ''];
  const cookie = all.find((c) => c.startsWith('gonest.sid='));
  return cookie && cookie.split(';')[0];
}

async function call(base, method, route, cookie, body) {
  const headers = {};
  if (cookie) headers.cookie = cookie;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${base}${route}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text; // the Rust layer's own 503 is plain text
  }
  return { status: response.status, cookie: setCookie(response), json };
}

/** Kills every process `start` started. */
function stopAll() {
  return Promise.all(children.map(stop));
}

module.exports = { BIN_DIR, SECRET, start, stop, stopAll, setCookie, call };
