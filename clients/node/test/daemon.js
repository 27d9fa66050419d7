'use strict';

// The real gonest-sessiond for the store's tests, on 127.0.0.1 with a port chosen by the OS. The
// binary comes from GONEST_BIN_DIR (default: `debug` in cargo's target directory, as cargo
// itself says, CARGO_TARGET_DIR included; build it with `cargo build -p gonest-sessiond`).

const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');

const BIN_DIR = process.env.GONEST_BIN_DIR || path.join(JSON.parse(execFileSync('cargo',
  ['metadata', '--format-version', '1', '--no-deps'], { cwd: __dirname })).target_directory, 'debug');

/** Starts the daemon; resolves with `{ child, url }` once it says where it listens. */
function startDaemon() {
  const child = spawn(path.join(BIN_DIR, 'gonest-sessiond'), ['--listen', '127.0.0.1:0', '--shutdown-drain', '0s'], {
    env: { ...process.env, RUST_LOG: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`the daemon did not start: ${seen}`)), 30000);
    child.stderr.on('data', (chunk) => {
      seen += chunk.toString().replace(/\x1b\[[0-9;]*m/g, '');
      const match = seen.match(/listening addr=(\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: `http://${match[1]}` });
      }
    });
    child.on('exit', (code) => reject(new Error(`the daemon exited with ${code}: ${seen}`)));
  });
}

/** Kills a daemon `startDaemon` started, if it still runs. */
function stopDaemon(child) {
  if (child && child.exitCode === null) child.kill('SIGKILL');
}

module.exports = { startDaemon, stopDaemon };
