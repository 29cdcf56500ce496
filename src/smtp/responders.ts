import type { HookName } from '../plugin/api';
import { Decision, type Verdict } from '../plugin/decision';
import { reply, type Reply } from './reply';

/**
 * Per-hook responders, after qpsmtpd's *_respond methods: a plugin decides,
 * the responder owns the SMTP reply. A verdict's message and enhanced code
 * replace the defaults' text; the code follows the decision and the hook.
 */
type Row = [code: number, enhanced: string, text: string];

interface HookReplies {
  deny: Row;
  denysoft: Row;
  deny_disconnect: Row;
  denysoft_disconnect: Row;
}

const policy = (what: string, permCode = 550, tempCode = 450): HookReplies => ({
  deny: [permCode, '5.7.1', `${what} rejected`],
  denysoft: [tempCode, '4.7.1', `${what} temporarily rejected, try again later`],
  deny_disconnect: [permCode, '5.7.1', `${what} rejected`],
  denysoft_disconnect: [421, '4.7.0', `${what} temporarily rejected, closing connection`],
});

/** RFC 4954 section 6: 535 5.7.8 bad credentials, 454 4.7.0 temporary failure. */
const auth: HookReplies = {
  deny: [535, '5.7.8', 'Authentication credentials invalid'],
  denysoft: [454, '4.7.0', 'Temporary authentication failure, try again later'],
  deny_disconnect: [535, '5.7.8', 'Authentication credentials invalid'],
  denysoft_disconnect: [421, '4.7.0', 'Temporary authentication failure, closing connection'],
};

const TABLE: Record<Exclude<HookName, 'reset_transaction' | 'disconnect' | 'deny' | 'ok'>, HookReplies> = {
  // RFC 5321 3.1: a server that refuses service answers the greeting with 554 (or 421 for now).
  connect: {
    deny: [554, '5.7.1', 'Connection refused'],
    denysoft: [421, '4.7.0', 'Connection temporarily refused, try again later'],
    deny_disconnect: [554, '5.7.1', 'Connection refused'],
    denysoft_disconnect: [421, '4.7.0', 'Connection temporarily refused, try again later'],
  },
  helo: policy('HELO'),
  ehlo: policy('EHLO'),
  mail: policy('Sender'),
  rcpt: policy('Recipient'),
  data: policy('Message', 554, 451),
  data_headers_end: policy('Message', 550, 451),
  data_post: policy('Message', 550, 451),
  queue: {
    deny: [554, '5.7.1', 'Message refused by queue'],
    denysoft: [451, '4.3.0', 'Message temporarily refused by queue, try again later'],
    deny_disconnect: [554, '5.7.1', 'Message refused by queue'],
    denysoft_disconnect: [421, '4.3.0', 'Message temporarily refused by queue'],
  },
  vrfy: policy('VRFY', 554, 450),
  noop: policy('NOOP'),
  unrecognized_command: {
    deny: [500, '5.5.2', 'Command unrecognized'],
    denysoft: [450, '4.5.2', 'Command unrecognized'],
    deny_disconnect: [521, '5.5.1', 'Too many unrecognized commands, closing connection'],
    denysoft_disconnect: [421, '4.5.2', 'Too many unrecognized commands, closing connection'],
  },
  quit: policy('QUIT'),
  auth,
  auth_plain: auth,
  auth_login: auth,
  auth_cram_md5: auth,
};

/** Replies for a hook that every plugin declined (or accepted): the normal protocol answer. */
export const DEFAULTS = {
  vrfy: reply(252, '2.5.0', 'Cannot VRFY user, but will accept message and attempt delivery'),
  vrfyOk: reply(250, '2.1.5', 'User OK'),
  noop: reply(250, '2.0.0', 'OK'),
  unrecognized: reply(500, '5.5.2', 'Command unrecognized'),
  quit: reply(221, '2.0.0', 'Bye', true),
  rset: reply(250, '2.0.0', 'Flushed'),
  data: reply(354, undefined, 'End data with <CR><LF>.<CR><LF>'),
  queued: reply(250, '2.0.0', 'Message accepted'),
  /** AUTH: every auth plugin declined. */
  authOk: reply(235, '2.7.0', 'Authentication successful'),
  authFailed: reply(535, '5.7.8', 'Authentication credentials invalid'),
} as const;

/**
 * The reply for a rejecting verdict at a hook, or undefined for DECLINED/OK
 * (the caller then proceeds) and for DONE (the plugin answered itself).
 */
export function respond(hook: keyof typeof TABLE, verdict: Verdict): Reply | undefined {
  const row = (() => {
    const t = TABLE[hook];
    switch (verdict.decision) {
      case Decision.DENY:
        return t.deny;
      case Decision.DENYSOFT:
        return t.denysoft;
      case Decision.DENY_DISCONNECT:
        return t.deny_disconnect;
      case Decision.DENYSOFT_DISCONNECT:
        return t.denysoft_disconnect;
      default:
        return undefined;
    }
  })();
  if (!row) return undefined;
  const code = verdict.code ?? row[0];
  // A verdict's enhanced code must agree with the reply class, or clients get "550 4.7.1".
  const enhanced = verdict.enhanced && verdict.enhanced[0] === String(code)[0] ? verdict.enhanced : row[1];
  const disconnect =
    hook === 'connect' ||
    verdict.decision === Decision.DENY_DISCONNECT ||
    verdict.decision === Decision.DENYSOFT_DISCONNECT ||
    code === 421;
  return reply(code, enhanced, verdict.message || row[2], disconnect);
}

export type RespondingHook = keyof typeof TABLE;
