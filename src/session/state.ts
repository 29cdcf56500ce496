import type { Message } from '../message/types';
import type { Notes } from './notes';
import type { Results } from './results';

/**
 * The client as plugins see it. Behind Postfix these are the XFORWARD
 * attributes (the real client), in standalone mode the TCP peer and its HELO.
 */
export interface ClientInfo {
  /** IP address of the client. */
  addr: string;
  port: number;
  /** Verified reverse DNS name, if known (XFORWARD NAME, or a resolver). */
  name?: string;
  /** HELO/EHLO argument the client gave. */
  helo?: string;
  /** SMTP or ESMTP (XFORWARD PROTO). */
  proto?: string;
  ident?: string;
  /** LOCAL or REMOTE (XFORWARD SOURCE). */
  source?: string;
  /** SASL login to pass downstream in XCLIENT LOGIN (our own AUTH, with auth.xclient_login). */
  login?: string;
  /** Where this description comes from. */
  via: 'tcp' | 'xforward' | 'xclient';
}

export interface Endpoint {
  addr: string;
  port: number;
}

/** Which checks a client or sender is exempt from: all immune-able plugins, or the named ones. */
export interface Immunity {
  all: boolean;
  plugins: Set<string>;
}

export interface Address {
  /** The address without angle brackets; '' for the null sender. */
  address: string;
  /** Local part and domain ('' when absent, e.g. the null sender or `postmaster`). */
  user: string;
  host: string;
  /** ESMTP parameters exactly as the client sent them (values xtext as on the wire). */
  params: Record<string, string | true>;
  /** The command argument as received (`<a@b> SIZE=1`), relayed unchanged downstream. */
  raw: string;
  /**
   * Per-recipient options other plugins read, set at RCPT (the aliases plugin:
   * `denysoft_greylist`, `spamassassin_reject_threshold=10`). Keys lower case;
   * a bare flag is `true`.
   */
  options?: Record<string, string | true>;
  /**
   * Checks this recipient is exempt from (the whitelist plugin: postmaster@,
   * abuse@), set at RCPT. The chain applies it to this recipient's RCPT only,
   * so it never carries over to the other recipients of the transaction.
   */
  immunity?: Immunity;
  /**
   * Set at RCPT to deliver elsewhere (the aliases plugin): the downstream gets
   * one RCPT per address here instead of this one, with the client's
   * parameters and an ORCPT naming this address; the client gets 250 when the
   * downstream accepted at least one of them.
   */
  forwardTo?: string[];
}

/** A client that authenticated with SMTP AUTH. */
export interface AuthInfo {
  user: string;
  /** PLAIN, LOGIN, CRAM-MD5 */
  method: string;
  /** Plugin that accepted the credentials. */
  plugin: string;
}

export interface ConnectionState {
  readonly id: string;
  readonly mode: 'postfix' | 'standalone';
  /** The client (XFORWARD/XCLIENT-described in Postfix mode). */
  readonly client: ClientInfo;
  /** The TCP peer (Postfix itself in Postfix mode). */
  readonly peer: Endpoint;
  readonly local: Endpoint;
  readonly tls: boolean;
  /** Clients allowed to relay (config relay_clients, or authenticated): immune to immune-able checks. */
  relayClient: boolean;
  /** Set once the client authenticated (SMTP AUTH); such a client is also a relay client. */
  auth?: AuthInfo;
  immunity: Immunity;
  notes: Notes;
  results: Results;
  /** Transactions started on this connection so far. */
  transactions: number;
  /** What the front end saw of the TCP peer's input timing (absent without a live socket). */
  readonly input?: ClientInput;
}

/**
 * The TCP peer's input timing, for early-talker checks. It describes the TCP
 * peer, so behind Postfix (or another proxy) it is the proxy's, not the client's.
 */
export interface ClientInput {
  /** The peer sent something before our greeting was written. */
  readonly talkedBeforeGreeting: boolean;
  /**
   * Whether the peer sent bytes beyond the command now being handled (before
   * the greeting: any bytes). During DATA that is message data sent before the
   * 354; pipelining (RFC 2920) ends a command group with DATA, so a well-behaved
   * client has nothing more to send then.
   */
  hasUnreadInput(): boolean;
}

export interface TransactionState {
  readonly id: string;
  sender?: Address;
  recipients: Address[];
  immunity: Immunity;
  notes: Notes;
  results: Results;
  /** The spooled message, from data_headers_end on. */
  message?: Message;
}
