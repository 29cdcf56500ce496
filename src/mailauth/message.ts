/**
 * The message as the client sent it, for signature verification.
 *
 * Signatures are verified over what arrived, but data_post plugins may have
 * added or removed header fields by the time a verifier runs (spf's
 * Received-SPF, auth_results removing forged Authentication-Results, anyone
 * listed earlier). The verifiers therefore take a copy of the header block at
 * data_headers_end, before any data_post plugin runs, and stream that copy
 * followed by the body as received. The body is never copied: the spool keeps
 * the received bytes whatever plugins do (their changes are a list of parts
 * over it), so a footer added by a plugin listed before the verifier does not
 * break a signature either.
 */
import { Readable } from 'node:stream';
import type { HeaderField, Message, MessageHeaders } from '../message/types';
import type { TransactionState } from '../session/state';

interface Snapshot {
  bytes: Buffer;
  fields: readonly HeaderField[];
}

/** Kept beside the transaction, not in its notes: the notes are for plugins to read, this is bytes. */
const received = new WeakMap<TransactionState, Snapshot>();

/** Called at data_headers_end: the header block before anyone changed it (first call wins). */
export function rememberReceivedHeaders(txn: TransactionState | undefined, headers: MessageHeaders): void {
  if (txn && !received.has(txn)) received.set(txn, { bytes: headers.toBuffer(), fields: headers.fields() });
}

function snapshot(txn: TransactionState | undefined, message: Message): Snapshot {
  return (txn && received.get(txn)) ?? { bytes: message.headers.toBuffer(), fields: message.headers.fields() };
}

/** The header fields as received (the current ones when no copy was taken). */
export function receivedHeaderFields(txn: TransactionState | undefined, message: Message): readonly HeaderField[] {
  return snapshot(txn, message).fields;
}

/** True if a plugin that ran earlier changed the body. */
export function bodyChanged(message: Message): boolean {
  return (message as Message & { bodyModified?: boolean }).bodyModified === true;
}

/** The received header block (separator included) followed by the received body, streamed from the spool. */
export function receivedMessageStream(txn: TransactionState | undefined, message: Message): Readable {
  const head = snapshot(txn, message).bytes;
  const body = message.receivedBodyStream();
  async function* all(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    for await (const chunk of body) yield chunk as Buffer;
  }
  return Readable.from(all(), { objectMode: false });
}
