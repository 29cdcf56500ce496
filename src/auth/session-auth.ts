/**
 * SMTP AUTH for one session: what is offered when (only after STARTTLS unless
 * auth.allow_insecure says otherwise), the auth hooks with qpsmtpd's
 * semantics (the mechanism's own hook first, then the generic `auth`; OK
 * authenticates, DECLINED tries the next plugin, DENY fails at once), the
 * replies (235 / 535 5.7.8 / 454 4.7.0), and the brute-force brake: failures
 * are counted per client address across connections, answered ever later, and
 * the client is cut off at the limit.
 */
import { isIP } from 'node:net';
import type { AuthMechanism, AuthRequest, HookName } from '../plugin/api';
import type { HookOutcome } from '../plugin/chain';
import { Decision, type Verdict } from '../plugin/decision';
import type { Logger } from '../log';
import type { Runtime } from '../runtime';
import { DEFAULTS, respond } from '../smtp/responders';
import { reply, type Reply } from '../smtp/reply';
import type { ConnectionState } from '../session/state';

export type AuthHook = 'auth' | 'auth_plain' | 'auth_login' | 'auth_cram_md5';

const SPECIFIC: Record<AuthMechanism, AuthHook> = { PLAIN: 'auth_plain', LOGIN: 'auth_login', 'CRAM-MD5': 'auth_cram_md5' };

/** What the front end offers now: the mechanisms for EHLO, and the answer to an AUTH that cannot go ahead. */
export interface AuthOffer {
  mechanisms: AuthMechanism[];
  refusal?: Reply;
}

export interface SessionAuthDeps {
  runtime: Runtime;
  state: ConnectionState;
  log: Logger;
  run(hook: AuthHook, request: AuthRequest): Promise<HookOutcome>;
  inTransaction(): boolean;
  /** The session recomputes relayClient (config relay_clients or authenticated). */
  changed(): void;
}

/** The core's results key for AUTH outcomes (karma and the transaction log read it). */
export const AUTH_RESULTS = 'auth';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function isLoopback(addr: string): boolean {
  const a = addr.replace(/^::ffff:/i, '');
  return isIP(a) === 4 ? a.startsWith('127.') : a === '::1';
}

export class SessionAuth {
  constructor(private readonly d: SessionAuthDeps) {}

  private get cfg(): Runtime['config']['auth'] {
    return this.d.runtime.config.auth;
  }

  /** Mechanisms the configured plugins can check, in the configured order. */
  supported(): AuthMechanism[] {
    const chain = this.d.runtime.chain;
    const generic = chain.has('auth');
    return this.cfg.mechanisms.filter((m) => generic || chain.has(SPECIFIC[m]));
  }

  private tooMany(): Reply {
    return reply(421, '4.7.0', 'Too many failed authentication attempts from your address, try again later', true);
  }

  offer(): AuthOffer {
    const st = this.d.state;
    // Behind Postfix, Postfix's own smtpd does AUTH; prequeue only ever sees what it passed on.
    const mechanisms = st.mode === 'standalone' ? this.supported() : [];
    if (!mechanisms.length) return { mechanisms };
    if (st.auth) return { mechanisms: [], refusal: reply(503, '5.5.1', 'Already authenticated') };
    const allowed = st.tls || this.cfg.allow_insecure === 'always' || (this.cfg.allow_insecure === 'loopback' && isLoopback(st.peer.addr));
    if (!allowed) {
      // Without a certificate there is no STARTTLS to point to: AUTH is just not available here.
      if (!this.d.runtime.tls) return { mechanisms: [] };
      return { mechanisms: [], refusal: reply(530, '5.7.0', 'Must issue a STARTTLS command first') };
    }
    if (this.d.inTransaction()) return { mechanisms, refusal: reply(503, '5.5.1', 'AUTH not permitted during a mail transaction') };
    if (this.d.runtime.bruteForce.blocked(st.client.addr)) return { mechanisms, refusal: this.tooMany() };
    return { mechanisms };
  }

  private hookOrder(mech: AuthMechanism): HookName[] {
    return [SPECIFIC[mech], 'auth'];
  }

  /** Runs the auth hooks for decoded credentials; the reply is final (a 421 or a disconnecting 535 closes). */
  async authenticate(req: AuthRequest): Promise<Reply> {
    const st = this.d.state;
    const who = `${req.mechanism} ${req.user}`;
    const refusal = this.offer().refusal;
    if (refusal) return refusal;
    let verdict: Verdict = { decision: Decision.DECLINED };
    let plugin: string | undefined;
    if (req.authzid !== undefined && req.authzid !== req.user) {
      // Acting for someone else would need authorization rules prequeue does not have.
      verdict = { decision: Decision.DENY, message: 'Authorization identity must match the authentication identity' };
    } else if ((req.mechanism === 'PLAIN' || req.mechanism === 'LOGIN') && !req.password) {
      // An empty password is an unauthenticated LDAP bind that "succeeds": never let one through to a backend.
      verdict = { decision: Decision.DENY };
    } else {
      for (const hook of this.hookOrder(req.mechanism)) {
        if (!this.d.runtime.chain.has(hook)) continue;
        const outcome = await this.d.run(hook as AuthHook, req);
        if (outcome.verdict.decision === Decision.DECLINED) continue;
        verdict = outcome.verdict;
        plugin = outcome.plugin;
        break;
      }
    }

    if (verdict.decision === Decision.OK) {
      st.auth = { user: req.user, method: req.mechanism, plugin: plugin ?? 'unknown' };
      this.d.changed();
      st.results.add(AUTH_RESULTS, { pass: who, user: req.user, method: req.mechanism, plugin });
      this.d.log.info(`authenticated ${req.user} with ${req.mechanism} by ${plugin}`, { user: req.user, method: req.mechanism, plugin });
      return DEFAULTS.authOk;
    }
    if (verdict.decision === Decision.DENYSOFT || verdict.decision === Decision.DENYSOFT_DISCONNECT) {
      st.results.add(AUTH_RESULTS, { err: `${who}: temporary failure${plugin ? ` (${plugin})` : ''}` });
      this.d.log.warn(`AUTH ${who}: temporary failure from ${plugin ?? 'core'}: ${verdict.message ?? ''}`);
      // A plugin crash comes as 451; AUTH's temporary failure is 454 (RFC 4954).
      return respond('auth', { ...verdict, code: undefined })!;
    }

    // DENY, DENY_DISCONNECT, every plugin declining (or a DONE without a reply): the credentials are not good.
    const addr = st.client.addr;
    const f = this.d.runtime.bruteForce.fail(addr);
    st.results.add(AUTH_RESULTS, { fail: `${who}${plugin ? ` (${plugin})` : ''}`, failures: f.count });
    this.d.log.info(`AUTH ${who} failed (${plugin ? `denied by ${plugin}` : 'no plugin accepted'}); ${f.count} failure(s) from ${addr}`, {
      user: req.user,
      method: req.mechanism,
      failures: f.count,
    });
    if (f.delayMs > 0) await sleep(f.delayMs);
    if (f.blocked) {
      st.results.add(AUTH_RESULTS, { fail: 'too many failures', blocked: true });
      this.d.log.warn(`AUTH: ${addr} reached ${this.cfg.brute_force.max_failures} failures; disconnecting`);
      return reply(535, '5.7.8', 'Authentication credentials invalid; too many failures, closing connection', true);
    }
    const denied: Verdict = verdict.decision === Decision.DENY_DISCONNECT ? verdict : { decision: Decision.DENY, message: verdict.message };
    return respond('auth', { ...denied, code: undefined, enhanced: undefined }) ?? DEFAULTS.authFailed;
  }
}
