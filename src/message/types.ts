import type { Readable } from 'node:stream';

/** One header field as received: raw bytes are kept so an untouched header is relayed byte-exact. */
export interface HeaderField {
  /** Field name as written (case kept). */
  readonly name: string;
  /** The field body, unfolded (CRLF+WSP removed), leading whitespace trimmed, decoded as latin1. */
  readonly value: string;
  /** The whole field as received, including folding and the final CRLF. */
  readonly raw: Buffer;
}

/** The header block of a spooled message. Edits are kept as edits; untouched fields stay byte-exact. */
export interface MessageHeaders {
  fields(): readonly HeaderField[];
  /** First field of that name (case-insensitive), unfolded value. */
  get(name: string): string | undefined;
  getAll(name: string): string[];
  count(name: string): number;
  /**
   * Insert a field at the top of the header block (where trace headers go).
   * The value may be folded (CRLF followed by SP or HT and more text, as
   * signature headers must be kept); any other CR or LF is refused.
   */
  prepend(name: string, value: string): void;
  /** Insert a field at the end of the header block (folding as for prepend). */
  append(name: string, value: string): void;
  /** Remove every field of that name (only those `match` accepts, if given); returns how many were removed. */
  remove(name: string, match?: (field: HeaderField) => boolean): number;
  /** The header block as it will be relayed, including the empty line that ends it (if the message had one). */
  toBuffer(): Buffer;
}

/** A stretch of the body as received, used to build a new body around the original without copying it. */
export interface BodyRange {
  readonly kind: 'range';
  readonly start: number;
  readonly end: number;
}

export type BodyPart = Buffer | BodyRange;

/**
 * A message spooled by prequeue (memory up to a threshold, then a temp file).
 * Data is unstuffed and its lines end in CRLF. Plugins at data_post may change
 * headers and body; everything they do not touch is relayed byte for byte.
 */
export interface Message {
  /** Bytes as received (header + body), before any change. */
  readonly receivedSize: number;
  readonly headers: MessageHeaders;
  /** True if the received message had an empty line separating header and body. */
  readonly hasBody: boolean;
  /** The received body, as a range usable in replaceBody(). */
  originalBody(): BodyRange;
  /** Size of the current body (after changes). */
  bodySize(): number;
  /** Stream of the current body. */
  bodyStream(): Readable;
  /** Stream of the body as received, whatever plugins changed since (signature verifiers need it). */
  receivedBodyStream(): Readable;
  /** The last `n` bytes of the current body (for plugins that append). */
  bodyTail(n: number): Promise<Buffer>;
  /** Read the current body into memory; refuses (throws) past `limit` bytes. */
  bodyBuffer(limit?: number): Promise<Buffer>;
  /** The current body as parts (wrap it in new parts without losing earlier changes). */
  bodyParts(): readonly BodyPart[];
  /** Replace the body by a list of parts; BodyRange parts refer to the received body. */
  replaceBody(parts: BodyPart[]): void;
  appendBody(data: Buffer | string): void;
  prependBody(data: Buffer | string): void;
  /** Size of the whole current message (header block + body). */
  size(): number;
  /** Stream of the whole current message, unstuffed, as it will be relayed. */
  stream(): Readable;
  /** Free the spool (temp file). Called by the core when the transaction ends. */
  dispose(): Promise<void>;
}
