import { encodeXtext } from '../backend/xtext';
import type { Message } from '../message/types';
import type { PathArgument } from '../smtp/frontend';
import { Results } from './results';
import type { Address, TransactionState } from './state';

export function toAddress(arg: PathArgument): Address {
  const at = arg.address.lastIndexOf('@');
  return {
    address: arg.address,
    user: at < 0 ? arg.address : arg.address.slice(0, at),
    host: at < 0 ? '' : arg.address.slice(at + 1).toLowerCase(),
    params: arg.args,
    raw: arg.raw,
  };
}

/**
 * The RCPT argument that hands `target` to the downstream in place of
 * `original` (Address.forwardTo): the client's parameters (NOTIFY...) as sent,
 * plus, when the downstream speaks DSN and the client gave none, an ORCPT
 * naming the original recipient (RFC 3461), so delivery reports still name the
 * address the sender used. A non-ASCII original would need RFC 6533's utf-8
 * form; it gets none rather than a wrong one.
 */
export function forwardedRcptArgument(original: Address, target: string, dsn: boolean): string {
  const params = original.raw.replace(/^\s*(?:<[^<>]*>|\S+)/, '');
  const orcpt = dsn && original.params.ORCPT === undefined && /^[\x21-\x7e]+$/.test(original.address);
  return `<${target}>${params}${orcpt ? ` ORCPT=rfc822;${encodeXtext(original.address)}` : ''}`;
}

/** One mail transaction (MAIL .. end of data or RSET) with what the log line needs. */
export class Transaction implements TransactionState {
  readonly id: string;
  readonly started = Date.now();
  sender?: Address;
  recipients: Address[] = [];
  immunity = { all: false, plugins: new Set<string>() };
  notes: Record<string, unknown> = {};
  results = new Results();
  message?: Message;
  /** Recipients refused (by a plugin or the downstream), for the log. */
  rejected: { address: string; reply: string }[] = [];
  size = 0;

  constructor(connId: string, seq: number) {
    this.id = `${connId}.${seq}`;
  }

  async dispose(): Promise<void> {
    const m = this.message;
    this.message = undefined;
    await m?.dispose();
  }
}
