/**
 * greylisting — temporarily refuse mail from unknown (client network, sender,
 * recipient) triplets; real MTAs retry, most spamware does not. After
 * qpsmtpd's greylisting plugin (Evan Harris's algorithm), with its periods.
 *
 * Options:
 *   black_timeout: seconds    a new triplet is deferred for this long (default 3000 = 50 min)
 *   grey_timeout: seconds     a retry after black_timeout and before this (counted from the
 *                             first attempt) passes and makes the triplet white (default 12000
 *                             = 3 h 20 min); a triplet not retried in time starts over
 *   white_timeout: seconds    a white triplet passes without delay for this long after its
 *                             last use; each use restarts it (default 3110400 = 36 days)
 *   ipv4_prefix: 0-32         client addresses are grouped by network (default 24): big
 *   ipv6_prefix: 0-128        senders retry from another host of the same pool (default 64)
 *   sender: boolean           the envelope sender is part of the triplet (default true)
 *   recipient: boolean        the recipient is part of the triplet (default true); with both
 *                             false a network that delivered once is white for everything
 *                             (qpsmtpd's default)
 *   normalize_sender: boolean compare senders with digit runs as '#', without +extension and
 *                             BATV/prvs tags, so VERP and BATV senders (a new address for
 *                             each message) get through after one retry (default true)
 *   defer_at: rcpt | data     rcpt (default): each greylisted recipient gets 450 at RCPT.
 *                             data (qpsmtpd's deny_late): recipients are recorded at RCPT, the
 *                             message gets one 451 at DATA if any accepted recipient is
 *                             greylisted — one answer for all recipients, which is what Postfix
 *                             with smtpd_proxy_options=speed_adjust needs
 *   per_recipient: boolean    only greylist recipients whose address options (set at RCPT by the
 *                             aliases plugin) carry `denysoft_greylist` (default false: greylist
 *                             everyone except recipients with `denysoft_greylist=no`/`0`/`off`)
 *   on_store_error: defer | skip
 *                             the store cannot be read or written: defer (default) answers
 *                             "451 4.3.0" (at RCPT, or at DATA with defer_at: data) so no mail
 *                             is lost — senders retry — but while the store is down all mail
 *                             is delayed, known senders too; skip lets mail through ungreylisted
 *                             for the duration (logged). Never silently "white".
 *   message: string           the deferral text (default "Greylisted, please try again later")
 *
 * The null sender (bounces, DSNs, sender-verification callouts) is greylisted
 * by client network alone and always deferred at DATA: a callout (MAIL FROM:<>,
 * RCPT, QUIT) must not get a 4xx at RCPT, or the remote site would refuse our
 * users' mail as unverifiable.
 *
 * State is kept in the shared store (config `store:`): with Redis, every
 * prequeue instance greylists with one view. Entries expire by themselves
 * (grey after grey_timeout, white after white_timeout without use).
 *
 * Immunity (relay clients, authenticated users, allow-listed clients and
 * senders, karma's grant) is applied by the core. The common option
 * `reject: false` seeds the database without deferring anything, as qpsmtpd
 * recommends for the first week or two. List it before rcpt_ok, whose OK
 * ends the rcpt chain, and after plugins that set recipient options.
 *
 * Results: pass `white` (known triplet) or `retried` (retry in the grey window,
 * now white), fail `greylisted`, skip `not opted in` / `store error`, err
 * with the store's message.
 */
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { denysoft } from '../src/plugin/decision';
import type { Address } from '../src/session/state';
import type { KvStore } from '../src/store/types';
import { parseCidr } from '../src/util/cidr';

/** The plugin's clock; tests move it instead of waiting 50 minutes. */
export const clock = { now: (): number => Date.now() };

const DEFAULT_MESSAGE = 'Greylisted, please try again later';
const STORE_FAILURE_MESSAGE = 'Temporary local problem, please try again later';

/** What is kept per triplet (times in ms since the epoch). */
interface TripletRecord {
  first: number;
  last: number;
  white: boolean;
  /** Attempts deferred so far. */
  tries: number;
  /** Deliveries let through while white. */
  passes: number;
}

type Outcome =
  | { state: 'new' | 'early'; record: TripletRecord }
  | { state: 'retried' | 'white'; record: TripletRecord }
  | { state: 'store error'; error: string };

/** Per-transaction state in txn.notes[name]. */
interface TxnNotes {
  /** Outcome per triplet key: a key is checked once per transaction. */
  decided: Map<string, Outcome>;
  /** Recipients whose deferral waits for DATA. */
  grey: string[];
  /** Recipients whose check failed on the store, with defer policy, waiting for DATA. */
  failed: string[];
}

const optionsSchema = z
  .object({
    black_timeout: z.number().min(0).default(50 * 60),
    grey_timeout: z.number().positive().default(3 * 3600 + 20 * 60),
    white_timeout: z.number().positive().default(36 * 86400),
    ipv4_prefix: z.number().int().min(0).max(32).default(24),
    ipv6_prefix: z.number().int().min(0).max(128).default(64),
    sender: z.boolean().default(true),
    recipient: z.boolean().default(true),
    normalize_sender: z.boolean().default(true),
    defer_at: z.enum(['rcpt', 'data']).default('rcpt'),
    per_recipient: z.boolean().default(false),
    on_store_error: z.enum(['defer', 'skip']).default('defer'),
    message: z.string().min(1).default(DEFAULT_MESSAGE),
  })
  .strict()
  .refine((o) => o.grey_timeout > o.black_timeout, {
    path: ['grey_timeout'],
    message: 'must be longer than black_timeout (a retry must have a window to pass in)',
  });

/** The client's network in CIDR notation (`192.0.2.0/24`, `2001:db8:0:1:0:0:0:0/64`); the address itself if unparsable. */
export function clientNetwork(addr: string, ipv4Prefix: number, ipv6Prefix: number): string {
  const ip = parseCidr(addr);
  if (!ip) return addr.toLowerCase();
  const [width, bits] = ip.family === 4 ? [32, ipv4Prefix] : [128, ipv6Prefix];
  const mask = bits === 0 ? 0n : ((1n << BigInt(bits)) - 1n) << BigInt(width - bits);
  const net = ip.network & mask;
  if (ip.family === 4) {
    return `${[24n, 16n, 8n, 0n].map((s) => (net >> s) & 0xffn).join('.')}/${bits}`;
  }
  const groups = Array.from({ length: 8 }, (_, i) => ((net >> BigInt((7 - i) * 16)) & 0xffffn).toString(16));
  return `${groups.join(':')}/${bits}`;
}

/**
 * A sender as greylisting compares it: lower case, BATV tags and +extensions
 * gone, digit runs as '#' (VERP: bounce-123-456@list -> bounce-#-#@list).
 */
export function normalizeSender(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address.toLowerCase();
  let local = address.slice(0, at).toLowerCase();
  const domain = address.slice(at + 1).toLowerCase();
  local = local.replace(/^prvs=[^=]+=/, '').replace(/^btv1==[^=]+==/, '');
  const plus = local.indexOf('+');
  if (plus > 0) local = local.slice(0, plus);
  return `${local.replace(/\d+/g, '#')}@${domain}`;
}

/** `denysoft_greylist` from the recipient's options: true (on), false (explicitly off) or undefined. */
function recipientFlag(rcpt: Address): boolean | undefined {
  const v = rcpt.options?.denysoft_greylist;
  if (v === undefined) return undefined;
  if (v === true) return true;
  return !/^(0|no|false|off)$/i.test(v.trim());
}

function parseRecord(text: string | undefined): TripletRecord | undefined {
  if (text === undefined) return undefined;
  try {
    const r = JSON.parse(text) as Partial<TripletRecord>;
    if (typeof r.first !== 'number' || typeof r.last !== 'number') return undefined;
    return { first: r.first, last: r.last, white: !!r.white, tries: r.tries ?? 0, passes: r.passes ?? 0 };
  } catch {
    return undefined;
  }
}

export default definePlugin({
  description: 'defer mail from unknown (network, sender, recipient) triplets until they retry',
  options: optionsSchema,
  create(opts, env) {
    const store: KvStore = env.store();
    const black = opts.black_timeout * 1000;
    const grey = opts.grey_timeout * 1000;
    const white = opts.white_timeout * 1000;

    const keyFor = (ctx: HookContext, sender: Address | undefined, rcpt: Address): string => {
      const net = clientNetwork(ctx.conn.client.addr, opts.ipv4_prefix, opts.ipv6_prefix);
      const from = sender?.address ?? '';
      if (from === '') return `${net}|<>|*`;
      const s = !opts.sender ? '*' : opts.normalize_sender ? normalizeSender(from) : from.toLowerCase();
      const r = opts.recipient ? rcpt.address.toLowerCase() : '*';
      return `${s === '*' && r === '*' ? net : `${net}|${s}|${r}`}`;
    };

    /** The qpsmtpd state machine, on timestamps (the store's expiry only collects garbage). */
    const check = async (key: string, now: number): Promise<Outcome> => {
      const rec = parseRecord(await store.get(key));
      const save = (r: TripletRecord, ttlMs: number) => store.set(key, JSON.stringify(r), ttlMs / 1000);
      if (rec?.white && now - rec.last < white) {
        const r = { ...rec, last: now, passes: rec.passes + 1 };
        await save(r, white);
        return { state: 'white', record: r };
      }
      // A first attempt 'in the future' (another instance's clock runs ahead) counts as just now.
      if (rec && !rec.white && now - rec.first < grey) {
        if (now - rec.first < black) {
          const r = { ...rec, tries: rec.tries + 1 };
          // Keeps the grey window counted from the first attempt.
          await save(r, rec.first + grey - now);
          return { state: 'early', record: r };
        }
        const r = { ...rec, white: true, last: now, passes: 1 };
        await save(r, white);
        return { state: 'retried', record: r };
      }
      // Unknown, or its grey window or white period is over: start again.
      const r: TripletRecord = { first: now, last: now, white: false, tries: 1, passes: 0 };
      await save(r, grey);
      return { state: 'new', record: r };
    };

    const notes = (ctx: HookContext): TxnNotes =>
      ((ctx.txn!.notes[ctx.name] as TxnNotes | undefined) ??= { decided: new Map(), grey: [], failed: [] });

    /** Records a result once per transaction (the log line lists it once, however many recipients). */
    const resultOnce = (ctx: HookContext, kind: 'pass' | 'fail' | 'skip' | 'err', value: string) => {
      const mine = (ctx.txn ?? ctx.conn).results;
      if (!mine.has(ctx.name, kind, value)) ctx.result({ [kind]: value });
    };

    const describe = (o: Outcome, now: number): string => {
      switch (o.state) {
        case 'new':
          return `first attempt, deferred for ${opts.black_timeout} s`;
        case 'early':
          return `retry too early (attempt ${o.record.tries}), ${Math.ceil((o.record.first + black - now) / 1000)} s to go`;
        case 'retried':
          return `retried after ${Math.round((now - o.record.first) / 1000)} s: now white`;
        case 'white':
          return `white (${o.record.passes} deliveries)`;
        case 'store error':
          return `store error: ${o.error}`;
      }
    };

    return {
      async rcpt(ctx, rcpt) {
        const txn = ctx.txn;
        if (!txn) return;
        const flag = recipientFlag(rcpt);
        if (opts.per_recipient ? flag !== true : flag === false) {
          resultOnce(ctx, 'skip', opts.per_recipient ? 'not opted in' : 'opted out');
          return;
        }
        const st = notes(ctx);
        const key = keyFor(ctx, txn.sender, rcpt);
        const now = clock.now();
        let outcome = st.decided.get(key);
        if (!outcome) {
          try {
            outcome = await check(key, now);
          } catch (err) {
            outcome = { state: 'store error', error: (err as Error).message };
          }
          st.decided.set(key, outcome);
          const line = `${key}: ${describe(outcome, now)}`;
          if (outcome.state === 'store error') ctx.log.error(line, { policy: opts.on_store_error });
          else if (outcome.state === 'white') ctx.log.debug(line);
          else ctx.log.info(line);
        }
        const atData = opts.defer_at === 'data' || txn.sender?.address === '';
        switch (outcome.state) {
          case 'white':
          case 'retried':
            resultOnce(ctx, 'pass', outcome.state);
            return;
          case 'store error':
            resultOnce(ctx, 'err', `store: ${outcome.error}`);
            if (opts.on_store_error === 'skip') {
              resultOnce(ctx, 'skip', 'store error');
              return;
            }
            if (atData) {
              st.failed.push(rcpt.address);
              return;
            }
            return denysoft(STORE_FAILURE_MESSAGE, '4.3.0');
          case 'new':
          case 'early':
            resultOnce(ctx, 'fail', 'greylisted');
            if (atData) {
              st.grey.push(rcpt.address);
              return;
            }
            return denysoft(opts.message, '4.7.1');
        }
      },

      data(ctx) {
        const txn = ctx.txn;
        const st = txn?.notes[ctx.name] as TxnNotes | undefined;
        if (!txn || !st) return;
        // Only recipients that were accepted count; one refused later has no say.
        const accepted = new Set(txn.recipients.map((r) => r.address));
        if (st.failed.some((a) => accepted.has(a))) return denysoft(STORE_FAILURE_MESSAGE, '4.3.0');
        const grey = st.grey.filter((a) => accepted.has(a));
        if (grey.length === 0) return;
        ctx.log.info(`deferring the message at DATA: ${grey.length} of ${accepted.size} recipients greylisted`);
        return denysoft(opts.message, '4.7.1');
      },
    };
  },
});
