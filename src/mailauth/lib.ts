/**
 * The parts of mailauth prequeue uses, with types for what we read. The
 * package's own index.d.ts does not match its code in places (dkimSign takes
 * `signatureData`, results carry more than declared), so the shapes here are
 * written from lib/ itself (mailauth 4.13).
 */
import type { Readable } from 'node:stream';

/** `dns.promises.resolve` shape: what src/dns/resolver.ts nodeStyle() gives. */
export type NodeResolver = (name: string, type?: string) => Promise<unknown[]>;

export interface AuthStatus {
  result: string;
  comment?: string;
  header?: Record<string, string | false | undefined>;
  smtp?: Record<string, string | undefined>;
  policy?: Record<string, string>;
  aligned?: string | false;
  underSized?: number;
}

export interface SpfResult {
  domain: string;
  'client-ip': string;
  helo?: string;
  'envelope-from'?: string;
  status: AuthStatus;
  rr?: string;
  lookups?: { limit: number; count: number; void: number };
}

export interface DkimSignatureResult {
  /** Absent on the placeholder result of an unsigned message. */
  signingDomain?: string;
  selector?: string;
  /** The b= value. */
  signature?: string;
  algo?: string;
  format?: string;
  bodyHash?: string;
  bodyHashExpecting?: string;
  status: AuthStatus;
  modulusLength?: number;
  info?: string;
}

export interface ArcData {
  chain: unknown[] | false;
  lastEntry?: unknown;
  error?: Error;
}

export interface DkimVerifyResult {
  headerFrom: string[];
  envelopeFrom: string | false;
  results: DkimSignatureResult[];
  /** Non-enumerable: input for arc(). */
  readonly arc?: ArcData;
}

export interface ArcResult {
  i?: number | false;
  status: AuthStatus & { shouldSeal?: boolean };
}

export interface DkimSignatureData {
  signingDomain: string;
  selector: string;
  /** PEM (PKCS#8 or PKCS#1 for RSA). */
  privateKey: string | Buffer;
  algorithm?: string;
  canonicalization?: string;
}

export interface DkimSignOptions {
  canonicalization?: string;
  /** Colon-separated field names; mailauth's default list when absent. */
  headerList?: string;
  signTime?: Date;
  expires?: Date;
  signatureData: DkimSignatureData[];
}

export interface DkimSignResult {
  /** The DKIM-Signature fields, folded, each ending in CRLF. */
  signatures: string;
  errors: { selector?: string; signingDomain?: string; err: Error }[];
}

export interface DmarcRecord {
  v?: string;
  p?: string;
  sp?: string;
  pct?: number;
  adkim?: string;
  aspf?: string;
  rua?: string;
  rr: string;
  /** True when the record is the organisational domain's (the From domain has none). */
  isOrgRecord: boolean;
  [tag: string]: unknown;
}

interface MailauthSpf {
  spf(opts: { sender?: string; ip: string; helo?: string; mta?: string; resolver?: NodeResolver; maxResolveCount?: number; maxVoidCount?: number }): Promise<SpfResult>;
}
interface MailauthVerify {
  dkimVerify(input: Readable | Buffer | string, opts?: { resolver?: NodeResolver; sender?: string; minBitLength?: number }): Promise<DkimVerifyResult>;
}
interface MailauthSign {
  dkimSign(input: Readable | Buffer | string, opts: DkimSignOptions): Promise<DkimSignResult>;
}
interface MailauthArc {
  arc(data: ArcData, opts?: { resolver?: NodeResolver; minBitLength?: number }): Promise<ArcResult>;
}
type GetDmarcRecord = (domain: string, resolver?: NodeResolver) => Promise<DmarcRecord | false>;
interface MailauthTools {
  defaultDKIMFieldNames: string;
}

/* eslint-disable @typescript-eslint/no-require-imports */
export const spf = (require('mailauth/lib/spf') as MailauthSpf).spf;
export const dkimVerify = (require('mailauth/lib/dkim/verify') as MailauthVerify).dkimVerify;
export const dkimSign = (require('mailauth/lib/dkim/sign') as MailauthSign).dkimSign;
export const arc = (require('mailauth/lib/arc') as MailauthArc).arc;
export const getDmarcRecord = require('mailauth/lib/dmarc/get-dmarc-record') as GetDmarcRecord;
/** The fields mailauth signs by default (From, Subject, Date, To, MIME fields, List-*...). */
export const DEFAULT_SIGNED_HEADERS: readonly string[] = (require('mailauth/lib/tools') as MailauthTools).defaultDKIMFieldNames.split(':');
/* eslint-enable @typescript-eslint/no-require-imports */
