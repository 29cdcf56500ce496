/**
 * The SASL exchanges of SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN and
 * CRAM-MD5 (RFC 2195). Only the decoding lives here: whether the credentials
 * are good is for the auth hooks to say (src/auth/session-auth.ts).
 */
import { randomBytes } from 'node:crypto';
import { reply, type Reply } from '../smtp/reply';
import type { AuthMechanism, AuthRequest } from '../plugin/api';

export const MECHANISMS: readonly AuthMechanism[] = ['PLAIN', 'LOGIN', 'CRAM-MD5'];

export type SaslStep =
  /** Send `334 <text>` (text already base64) and feed the client's next line to next(). */
  | { kind: 'challenge'; text: string }
  | { kind: 'done'; request: AuthRequest }
  /** The exchange is over without credentials (cancelled, malformed): send the reply. */
  | { kind: 'error'; reply: Reply };

// Credentials end up in logs, in LDAP filters and on a checkpassword program's input: no control characters in names.
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

const CANCELLED: SaslStep = { kind: 'error', reply: reply(501, '5.7.0', 'Authentication cancelled') };
const UNDECODABLE: SaslStep = { kind: 'error', reply: reply(501, '5.5.2', 'Cannot decode the response (base64, UTF-8)') };
const BAD_USER: SaslStep = { kind: 'error', reply: reply(501, '5.5.2', 'Invalid user name') };

/** Decodes one client line: undefined when it is not base64 of UTF-8 text. "=" is the empty string (RFC 4954). */
export function decodeResponse(line: string): string | undefined {
  const s = line.trim();
  if (s === '=') return '';
  if (!BASE64.test(s)) return undefined;
  try {
    return utf8.decode(Buffer.from(s, 'base64'));
  } catch {
    return undefined;
  }
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

function validUser(user: string): boolean {
  return user.length > 0 && user.length <= 256 && !CONTROL.test(user);
}

/** One AUTH exchange: start() with the command's arguments, then next() for each continuation line. */
export class SaslExchange {
  private step: ((line: string) => SaslStep) | undefined;

  private constructor(readonly mechanism: AuthMechanism) {}

  /** `initial` is the initial response of `AUTH <mech> <initial>`, if the client sent one. */
  static start(mechanism: AuthMechanism, initial: string | undefined, hostname: string): { exchange: SaslExchange; first: SaslStep } {
    const ex = new SaslExchange(mechanism);
    return { exchange: ex, first: ex.begin(initial, hostname) };
  }

  next(line: string): SaslStep {
    const step = this.step;
    this.step = undefined;
    if (!step) return { kind: 'error', reply: reply(503, '5.5.1', 'No authentication exchange in progress') };
    if (line.trim() === '*') return CANCELLED;
    return step(line);
  }

  private ask(text: string, then: (line: string) => SaslStep): SaslStep {
    this.step = then;
    return { kind: 'challenge', text };
  }

  private begin(initial: string | undefined, hostname: string): SaslStep {
    switch (this.mechanism) {
      case 'PLAIN':
        return initial === undefined ? this.ask('', (l) => this.plain(l)) : this.plain(initial);
      case 'LOGIN':
        return initial === undefined ? this.ask(b64('Username:'), (l) => this.loginUser(l)) : this.loginUser(initial);
      case 'CRAM-MD5': {
        if (initial !== undefined) return { kind: 'error', reply: reply(501, '5.5.4', 'CRAM-MD5 takes no initial response') };
        // Unpredictable, never repeated (RFC 2195 wants a unique msg-id-like string).
        const challenge = `<${randomBytes(12).toString('hex')}.${Math.floor(Date.now() / 1000)}@${hostname}>`;
        return this.ask(b64(challenge), (l) => this.cram(l, challenge));
      }
    }
  }

  private plain(line: string): SaslStep {
    const text = decodeResponse(line);
    if (text === undefined) return UNDECODABLE;
    const parts = text.split('\0');
    if (parts.length !== 3) return { kind: 'error', reply: reply(501, '5.5.2', 'PLAIN needs authzid NUL authcid NUL password') };
    const [authzid, user, password] = parts as [string, string, string];
    if (!validUser(user) || CONTROL.test(authzid)) return BAD_USER;
    return { kind: 'done', request: { mechanism: 'PLAIN', user, password, ...(authzid ? { authzid } : {}) } };
  }

  private loginUser(line: string): SaslStep {
    const user = decodeResponse(line);
    if (user === undefined) return UNDECODABLE;
    if (!validUser(user)) return BAD_USER;
    return this.ask(b64('Password:'), (l) => {
      const password = decodeResponse(l);
      if (password === undefined) return UNDECODABLE;
      // A checkpassword program reads NUL-separated fields: a NUL would smuggle in another field.
      if (password.includes('\0')) return UNDECODABLE;
      return { kind: 'done', request: { mechanism: 'LOGIN', user, password } };
    });
  }

  private cram(line: string, challenge: string): SaslStep {
    const text = decodeResponse(line);
    if (text === undefined) return UNDECODABLE;
    const sp = text.lastIndexOf(' ');
    const user = sp > 0 ? text.slice(0, sp) : '';
    const digest = text.slice(sp + 1).toLowerCase();
    if (!validUser(user)) return BAD_USER;
    if (!/^[0-9a-f]{32}$/.test(digest)) return { kind: 'error', reply: reply(501, '5.5.2', 'CRAM-MD5 needs user SP hex digest') };
    return { kind: 'done', request: { mechanism: 'CRAM-MD5', user, challenge, response: digest } };
  }
}
