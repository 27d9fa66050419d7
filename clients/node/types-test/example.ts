// A TypeScript express app's use of the store, checked by `npm run types` (tsc --noEmit).

import session from 'express-session';
import { COOKIE_KEY, GonestSessiondStore, OwnedSession } from '..';

declare module 'express-session' {
  interface SessionData {
    userId: string;
  }
}

const store = new GonestSessiondStore({
  url: 'http://127.0.0.1:7070',
  timeout: 1000,
  owner: (data) => data.userId,
});

export const middleware = session({
  name: 'gonest.sid',
  secret: 'a secret shared with the Rust apps',
  store,
  resave: false,
  saveUninitialized: false,
});

store.listByOwner('user-1', (err, sessions?: OwnedSession[]) => {
  if (err || !sessions) return;
  const soonest: number = Math.min(...sessions.map((s) => s.expiresAt.getTime()));
  console.log(soonest, COOKIE_KEY.length);
  store.destroyByOwner('user-1', [sessions[0].id], (_err, destroyed) => console.log(destroyed));
});

store.get('an id', (_err, data) => console.log(data?.userId));
store.close();
