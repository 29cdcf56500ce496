/**
 * The message as the client sent it, for signature verification.
 *
 * Signatures are verified over what arrived, but data_post plugins may have
 * added or removed header fields by the time a verifier runs (spf's
 * Received-SPF, auth_results removing forged Authentication-Results, anyone
 * listed earlier). The verifiers therefore take a copy of the header block at
 * data_headers_end, before any data_post plugin runs, and stream that copy
 * followed by the body. The body is the spool's, never copied; if a plugin
 * listed before the verifier changed it, verification would judge the changed
 * body, so that is logged loudly (list dkim and domainkeys first).
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

/** True if a plugin that ran earlier changed the body (verification would not see what was signed). */
export function bodyChanged(message: Message): boolean {
  return (message as Message & { bodyModified?: boolean }).bodyModified === true;
}

/** The received header block (separator included) followed by the body, streamed from the spool. */
export function receivedMessageStream(txn: TransactionState | undefined, message: Message): Readable {
  const head = snapshot(txn, message).bytes;
  async function* all(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    for await (const chunk of message.bodyStream()) yield chunk as Buffer;
  }
  return Readable.from(all(), { objectMode: false });
}
