/**
 * What every content-scanner plugin (spamassassin, clamav, and the next one)
 * shares: its options for where the daemon is, how long a scan may take, which
 * messages are too large to scan, and what a failed scan means; and the one
 * flow that applies them, so every scanner treats size caps and failures alike:
 *
 *   - a message over `max_size` is not read at all: it passes unscanned and is
 *     marked (result `skip`, and a header if the plugin adds one);
 *   - a scanner that is down, times out (`scan_timeout`) or answers nonsense
 *     gives `on_scan_error`: `defer` (451, the default: never an unscanned
 *     250 behind the admin's back) or `accept` (passes, marked unscanned,
 *     result `err`).
 *
 * The names avoid the core's common options (`timeout`, `on_error`), which
 * still apply around the whole hook; `scan_timeout` should stay below them.
 */
import { z } from 'zod';
import type { HookContext } from '../plugin/api';
import { denysoft, type Verdict } from '../plugin/decision';
import type { Message } from '../message/types';
import { ScanError } from './exchange';
import { parseTarget, type ScanTarget } from './target';

export interface ScannerDefaults {
  /** Where the daemon listens by default. */
  server: string;
  /** Seconds. */
  scan_timeout: number;
  /** Bytes. */
  max_size: number;
}

/** The option fields every scanner plugin has; spread them into its z.object(). */
export function scannerOptionFields(d: ScannerDefaults) {
  return {
    /** `host:port`, `[v6]:port`, or the path of a UNIX socket. */
    server: z.string().min(1).default(d.server),
    /** Seconds the whole scan (connect, send, verdict) may take. */
    scan_timeout: z.number().positive().max(300).default(d.scan_timeout),
    /** Messages larger than this (bytes, as they would be relayed) pass unscanned, marked. */
    max_size: z.number().int().positive().default(d.max_size),
    /** A failed scan: defer (4xx) or accept the message unscanned. */
    on_scan_error: z.enum(['defer', 'accept']).default('defer'),
  };
}

export interface ScannerConfig {
  server: string;
  scan_timeout: number;
  max_size: number;
  on_scan_error: 'defer' | 'accept';
}

/** Parses `server`, naming the option in the error (called in create(), so a bad address fails at load). */
export function scannerTarget(cfg: ScannerConfig, defaultPort: number): ScanTarget {
  try {
    return parseTarget(cfg.server, defaultPort);
  } catch (err) {
    throw new Error(`server: ${(err as Error).message}`);
  }
}

export type ScanOutcome<T> =
  | { status: 'scanned'; verdict: T; ms: number }
  | { status: 'skipped'; reason: string }
  | { status: 'failed'; error: Error; ms: number };

/** Applies the size cap, then runs the scan; failures are returned, not thrown. */
export async function runScan<T>(message: Message, cfg: ScannerConfig, scan: () => Promise<T>): Promise<ScanOutcome<T>> {
  const size = message.size();
  if (size > cfg.max_size) return { status: 'skipped', reason: `message of ${size} bytes exceeds max_size ${cfg.max_size}` };
  const start = Date.now();
  try {
    return { status: 'scanned', verdict: await scan(), ms: Date.now() - start };
  } catch (err) {
    return { status: 'failed', error: err instanceof Error ? err : new Error(String(err)), ms: Date.now() - start };
  }
}

/**
 * Records a failed scan and returns what on_scan_error says: a deferral, or
 * undefined when the message is to pass unscanned (the caller marks it).
 * `what` names the scanner for the client ("Virus scanner").
 */
export function scanFailure(ctx: HookContext, cfg: ScannerConfig, error: Error, what: string): Verdict | undefined {
  const kind = error instanceof ScanError ? error.kind : 'error';
  ctx.result({ err: `${kind}: ${error.message}` });
  if (cfg.on_scan_error === 'defer') {
    ctx.log.warn(`scan failed, deferring the message: ${error.message}`);
    return denysoft(`${what} temporarily unavailable, try again later`, '4.3.0');
  }
  ctx.log.warn(`scan failed, accepting the message unscanned (on_scan_error: accept): ${error.message}`);
  ctx.result({ skip: 'unscanned: scan failed' });
  return undefined;
}

/** The header value that marks an unscanned message: "Unscanned, <reason>". */
export const unscannedValue = (reason: string): string => `Unscanned, ${reason}`;
