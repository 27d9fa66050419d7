'use strict';

// Run by `npm pack` / `npm publish` (prepack): copies the repository's session.proto into the
// package, so an installed package needs nothing outside itself. In the repository, index.js
// reads the .proto where it lives, so the copy is never stale there.

const fs = require('node:fs');
const path = require('node:path');

const from = path.join(__dirname, '..', '..', '..', 'proto', 'proto', 'gonest', 'session', 'v1', 'session.proto');
const to = path.join(__dirname, '..', 'proto', 'gonest', 'session', 'v1', 'session.proto');
fs.mkdirSync(path.dirname(to), { recursive: true });
fs.copyFileSync(from, to);
