/**
 * Failed AUTH attempts per client address, across connections, in memory.
 * A client reaching `maxFailures` within `windowMs` is cut off (the session
 * closes the connection and refuses AUTH from that address until the oldest
 * failure leaves the window); every failure is answered later than the one
 * before (delay doubling up to maxDelay), which makes guessing slow even below
 * the limit. IPv6 clients count per /64: one host usually has the whole prefix.
 */
import { CidrList, parseCidr } from '../util/cidr';

export interface BruteForceOptions {
  /** Failures within the window that block the address; 0 turns blocking off (the delay still applies). */
  maxFailures: number;
  windowMs: number;
  /** Delay before answering the first failure; doubled for each further one. */
  delayMs: number;
  maxDelayMs: number;
  /** Addresses never blocked nor delayed (a webmail front end on localhost, say). */
  exempt: CidrList;
}

export interface FailureOutcome {
  /** Failures of this address within the window, this one included. */
  count: number;
  /** The address has now reached the limit. */
  blocked: boolean;
  /** How long to wait before answering this failure. */
  delayMs: number;
}

/** Addresses tracked at most; past it expired entries go first, then the oldest. */
const MAX_ENTRIES = 100_000;

export function clientKey(addr: string): string {
  if (!addr.includes(':') || /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(addr)) return addr.replace(/^::ffff:/i, '');
  const net = parseCidr(`${addr}/64`);
  return net ? `${net.network.toString(16)}/64` : addr;
}

export class BruteForceTracker {
  private failures = new Map<string, number[]>();

  constructor(private opts: BruteForceOptions) {}

  /** Keeps the counts of a tracker being replaced (config reload), under the new limits. */
  adopt(previous: BruteForceTracker): void {
    this.failures = previous.failures;
  }

  private exempt(addr: string): boolean {
    return this.opts.exempt.contains(addr);
  }

  private recent(key: string, now: number): number[] {
    const list = this.failures.get(key);
    if (!list) return [];
    const from = now - this.opts.windowMs;
    const kept = list.filter((t) => t > from);
    if (kept.length) this.failures.set(key, kept);
    else this.failures.delete(key);
    return kept;
  }

  count(addr: string, now = Date.now()): number {
    return this.recent(clientKey(addr), now).length;
  }

  blocked(addr: string, now = Date.now()): boolean {
    return this.opts.maxFailures > 0 && !this.exempt(addr) && this.count(addr, now) >= this.opts.maxFailures;
  }

  /** Records a failed attempt. */
  fail(addr: string, now = Date.now()): FailureOutcome {
    if (this.exempt(addr)) return { count: 0, blocked: false, delayMs: 0 };
    const key = clientKey(addr);
    const list = this.recent(key, now);
    list.push(now);
    // Keep no more than the limit needs (one more, so the oldest can leave the window).
    if (list.length > Math.max(this.opts.maxFailures, 16) + 1) list.shift();
    this.failures.delete(key);
    this.failures.set(key, list);
    if (this.failures.size > MAX_ENTRIES) this.sweep(now);
    const count = list.length;
    return {
      count,
      blocked: this.opts.maxFailures > 0 && count >= this.opts.maxFailures,
      delayMs: Math.min(this.opts.maxDelayMs, this.opts.delayMs * 2 ** Math.min(count - 1, 30)),
    };
  }

  private sweep(now: number): void {
    for (const key of [...this.failures.keys()]) this.recent(key, now);
    // Map order is least recently failed first.
    for (const key of this.failures.keys()) {
      if (this.failures.size <= MAX_ENTRIES * 0.9) break;
      this.failures.delete(key);
    }
  }

  get size(): number {
    return this.failures.size;
  }
}
