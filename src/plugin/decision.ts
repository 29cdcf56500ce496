/**
 * The decisions a hook can return, with qpsmtpd's meanings. A decision says what
 * should happen; the per-hook responders (src/smtp/responders.ts) turn it into
 * an SMTP reply, so plugins never pick reply codes for the common cases.
 */
export enum Decision {
  /** No opinion: the next plugin (and finally the default behaviour) decides. */
  DECLINED = 'DECLINED',
  /** Accept: stops the chain for this hook. */
  OK = 'OK',
  /** Permanent rejection (5xx). */
  DENY = 'DENY',
  /** Temporary rejection (4xx). */
  DENYSOFT = 'DENYSOFT',
  /** Permanent rejection, then the connection is closed. */
  DENY_DISCONNECT = 'DENY_DISCONNECT',
  /** Temporary rejection, then the connection is closed. */
  DENYSOFT_DISCONNECT = 'DENYSOFT_DISCONNECT',
  /** The plugin has answered the client itself; nothing more is sent. */
  DONE = 'DONE',
}

/** qpsmtpd's alias. */
export const DENYHARD = Decision.DENY_DISCONNECT;

/** A decision with an optional reply text (and enhanced status code) for the client. */
export interface Verdict {
  decision: Decision;
  /** Text shown to the client; the responder supplies a default. */
  message?: string;
  /** RFC 3463 enhanced status code such as "5.7.1"; the responder supplies a default. */
  enhanced?: string;
  /** Reply code, for the rare case the hook's default for this decision is wrong. */
  code?: number;
}

/** What a hook function may return. `undefined` counts as DECLINED. */
export type HookResult = Decision | Verdict | undefined | void;

export function toVerdict(result: HookResult): Verdict {
  if (result === undefined || result === null) return { decision: Decision.DECLINED };
  if (typeof result === 'string') return { decision: result };
  return result;
}

export const isDeny = (d: Decision): boolean =>
  d === Decision.DENY || d === Decision.DENYSOFT || d === Decision.DENY_DISCONNECT || d === Decision.DENYSOFT_DISCONNECT;

export const isTemporary = (d: Decision): boolean => d === Decision.DENYSOFT || d === Decision.DENYSOFT_DISCONNECT;

export const disconnects = (d: Decision): boolean => d === Decision.DENY_DISCONNECT || d === Decision.DENYSOFT_DISCONNECT;

const make =
  (decision: Decision) =>
  (message?: string, enhanced?: string): Verdict => ({ decision, message, enhanced });

export const declined = (): Verdict => ({ decision: Decision.DECLINED });
export const ok = make(Decision.OK);
export const deny = make(Decision.DENY);
export const denysoft = make(Decision.DENYSOFT);
export const denyDisconnect = make(Decision.DENY_DISCONNECT);
export const denysoftDisconnect = make(Decision.DENYSOFT_DISCONNECT);
export const done = (): Verdict => ({ decision: Decision.DONE });
