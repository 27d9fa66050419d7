// Types of gonest-sessiond-store: an express-session store kept by gonest-sessiond.

import { SessionData, Store } from 'express-session';

/** How to reach the daemon and what to store. */
export interface GonestSessiondStoreOptions {
  /** The daemon, `http://host:port` or `https://host:port` (default `http://127.0.0.1:7070`). */
  url?: string;
  /** The bearer token, when the daemon has `--auth-token-file`. */
  token?: string;
  /** A PEM CA certificate for an https daemon with a private CA. */
  ca?: Buffer | string;
  /** Session lifetime in seconds (default: the cookie's maxAge, else 24 h). */
  ttl?: number;
  /** Call timeout in ms (default 2000). */
  timeout?: number;
  /**
   * The owner of a session (a user id), called with the session at every save: a string is its
   * owner, anything else none. Without it, a session keeps the owner it was read with.
   */
  owner?: (session: SessionData) => string | null | undefined;
  /** Where warnings go (default `console.warn`); each is given once per process. */
  warn?: (message: string) => void;
}

/** One live session of an owner, as `listByOwner` gives it (without its data). */
export interface OwnedSession {
  id: string;
  createdAt: Date;
  expiresAt: Date;
  owner: string;
}

/**
 * An express-session store kept by gonest-sessiond. Sessions are stored as the Rust layer stores
 * them (one entry per top-level key, its JSON), so Rust and Node apps share them; saves are
 * compare-and-swap on the version read.
 */
export declare class GonestSessiondStore extends Store {
  constructor(options?: GonestSessiondStoreOptions);
  get(sid: string, callback: (err: any, session?: SessionData | null) => void): void;
  set(sid: string, session: SessionData, callback?: (err?: any) => void): void;
  touch(sid: string, session: SessionData, callback?: (err?: any) => void): void;
  destroy(sid: string, callback?: (err?: any) => void): void;
  /** The live sessions of `owner` ("your devices"), oldest first. */
  listByOwner(owner: string, callback: (err: Error | null, sessions?: OwnedSession[]) => void): void;
  /**
   * Destroys every session of `owner` but those in `exceptIds` ("log out everywhere else"), on
   * every stack sharing the daemon; calls back with how many it destroyed.
   */
  destroyByOwner(
    owner: string,
    exceptIds: readonly string[] | null | undefined,
    callback: (err: Error | null, destroyed?: number) => void,
  ): void;
  /** Closes the connection to the daemon. */
  close(): void;
}

/** The reserved entry under which express-session's `cookie` object is kept. */
export declare const COOKIE_KEY: string;
