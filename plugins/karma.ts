/**
 * karma — a reputation score per connection from what the other plugins
 * found (their results), plus the client's history kept in the shared store;
 * bad karma is refused, slowed down or limited, good karma spares a client
 * named checks. After Haraka's and qpsmtpd's karma plugins.
 *
 * Score. Each rule names a plugin (an instance name such as `dnsbl:spamhaus`,
 * or a module name matching all its instances), a result kind (pass, fail,
 * skip, err, msg) and optionally a value to match (exact, or `/regex/flags`),
 * and gives points. A rule counts once per connection and matching plugin
 * instance, as soon as the result is there: the score is brought up to date
 * at every hook karma has (connect, helo/ehlo, mail, rcpt, data, data_post,
 * reset_transaction, disconnect) and whenever any plugin rejects something (deny meta-hook),
 * which also adds `rejection_points`. The client's history adds its points
 * at connect. The score is in conn.notes.karma (`score`, `history`,
 * `awards`), each award in karma's results (pass for points, fail for
 * penalties) for the log line.
 *
 * Options (defaults in brackets):
 *   rules: [{ plugin, kind, match?, points, reason? }]   [the set below]; replaces it
 *   extra_rules: [...]                                    [] added to `rules`
 *   rejection_points: { perm, temp }                      [-1, 0] per rejection by another plugin
 *   reject_below: number | null                           [-8] score below it: DENY (5xx) ...
 *   defer_below: number | null                            [null] ... or, above reject_below, DENYSOFT
 *   reject_at: [mail, rcpt, data, data_post]              [mail, rcpt] where that is delivered
 *   message: string                                       ["Your reputation here is too poor (karma {score})"]
 *   tarpit: false | { below, seconds_per_point, max, hooks }
 *           [below 0, 1 s per point below, at most 5 s (30 max), hooks connect, helo, ehlo,
 *            mail, rcpt, data, data_post]: each reply is delayed by
 *            min(max, (below - score) * seconds_per_point)
 *   limit_recipients: false | { below, max }              [-3, 1] score below it: recipients past
 *           `max` in a transaction get 452 4.5.3 (the client sends them again later, RFC 5321)
 *   immunity: { above, plugins }                          [2, [greylisting]] score above it: the
 *           named plugins skip this connection (conn.immunity); taken back if the score falls
 *   history: false | { expire_days, min_connections, good_above, bad_below, points }
 *           [60, 5, 1, -1, { all_good: 2, good: 1, bad: -1, all_bad: -3 }]
 *
 * History, per client address, in the store (namespace `karma`): connections
 * seen (`total`), how many ended good (score without history above
 * good_above) or bad (below bad_below), last seen. Recorded at disconnect,
 * expiring `expire_days` after the last connection. From `min_connections`
 * on it counts: only good ones: all_good; only bad ones: all_bad; else more
 * good than bad: good, more bad than good: bad. History points never feed
 * the good/bad verdict of a connection (no self-fulfilling prophecy). A
 * store failure means no history points (neutral, recorded as err), never a
 * good reputation. Behind Postfix each proxy connection is one Postfix
 * session to prequeue, usually one transaction.
 *
 * Default rules (points): dnsbl fail -3, rhsbl fail -2, fcrdns fail -1,
 * fcrdns pass +1, helo fail -1, resolvable_fromhost fail -2, earlytalker
 * fail -3, geoip fail -1, badmailfrom fail -3, badrcptto fail -1, rcpt_ok
 * fail -1, count_unrecognized_commands fail -2, greylisting pass "white" +1,
 * spf pass +1, spf fail -2, dkim pass +1, dkim fail -1, dmarc pass +1, dmarc
 * fail -3, uribl fail -3, headers fail -1, spamassassin pass +1,
 * spamassassin fail -4, clamav fail -8, auth pass +5, auth fail -3.
 *
 * Relay clients, authenticated users and allow-listed clients/senders are
 * scored but never refused, slowed or limited, and their connections are
 * not recorded in the history. karma's own common defaults: immune false
 * (it handles them itself), timeout 45 s: it must stay above tarpit.max plus
 * a store round trip, or a tarpitted reply turns into a 451.
 *
 * Order: after the checks whose results it should see at each stage
 * (dnsbl, fcrdns, helo, spf...), before greylisting and rcpt_ok. Immunity
 * granted at MAIL already spares greylisting at RCPT. Results recorded after
 * karma's last hook (spamassassin, clamav at data_post) still count for the
 * history at disconnect.
 */
import { z } from 'zod';
import { definePlugin, type HookContext, type HookName } from '../src/plugin/api';
import { Decision, deny, denysoft, isDeny, isTemporary, type Verdict } from '../src/plugin/decision';
import type { Results, ResultKind } from '../src/session/results';
import type { ConnectionState } from '../src/session/state';

/** The plugin's clock for "last seen" (tests set it). */
export const clock = { now: (): number => Date.now() };

const ruleSchema = z
  .object({
    plugin: z.string().min(1),
    kind: z.enum(['pass', 'fail', 'skip', 'err', 'msg']),
    match: z.string().min(1).optional(),
    points: z.number().refine((n) => n !== 0, 'a rule must give or take points'),
    reason: z.string().min(1).optional(),
  })
  .strict();

export type KarmaRule = z.infer<typeof ruleSchema>;

const r = (plugin: string, kind: KarmaRule['kind'], points: number, match?: string): KarmaRule =>
  match === undefined ? { plugin, kind, points } : { plugin, kind, points, match };

export const DEFAULT_RULES: KarmaRule[] = [
  r('dnsbl', 'fail', -3),
  r('rhsbl', 'fail', -2),
  r('fcrdns', 'fail', -1),
  r('fcrdns', 'pass', 1),
  r('helo', 'fail', -1),
  r('resolvable_fromhost', 'fail', -2),
  r('earlytalker', 'fail', -3),
  r('geoip', 'fail', -1),
  r('badmailfrom', 'fail', -3),
  r('badrcptto', 'fail', -1),
  r('rcpt_ok', 'fail', -1),
  r('count_unrecognized_commands', 'fail', -2),
  r('greylisting', 'pass', 1, 'white'),
  r('spf', 'pass', 1),
  r('spf', 'fail', -2),
  r('dkim', 'pass', 1),
  r('dkim', 'fail', -1),
  r('dmarc', 'pass', 1),
  r('dmarc', 'fail', -3),
  r('uribl', 'fail', -3),
  r('headers', 'fail', -1),
  r('spamassassin', 'pass', 1),
  r('spamassassin', 'fail', -4),
  r('clamav', 'fail', -8),
  r('auth', 'pass', 5),
  r('auth', 'fail', -3),
];

const TARPIT_HOOKS = ['connect', 'helo', 'ehlo', 'mail', 'rcpt', 'data', 'data_post'] as const;
const REJECT_HOOKS = ['mail', 'rcpt', 'data', 'data_post'] as const;

const historyDefaults = {
  expire_days: 60,
  min_connections: 5,
  good_above: 1,
  bad_below: -1,
  points: { all_good: 2, good: 1, bad: -1, all_bad: -3 },
};

const optionsSchema = z
  .object({
    rules: z.array(ruleSchema).default(DEFAULT_RULES),
    extra_rules: z.array(ruleSchema).default([]),
    rejection_points: z
      .object({ perm: z.number().max(0).default(-1), temp: z.number().max(0).default(0) })
      .strict()
      .default({ perm: -1, temp: 0 }),
    reject_below: z.number().nullable().default(-8),
    defer_below: z.number().nullable().default(null),
    reject_at: z.array(z.enum(REJECT_HOOKS)).default(['mail', 'rcpt']),
    message: z.string().min(1).default('Your reputation here is too poor (karma {score})'),
    tarpit: z
      .union([
        z.literal(false),
        z
          .object({
            below: z.number().default(0),
            seconds_per_point: z.number().positive().default(1),
            // Far below Postfix's smtpd_proxy_timeout and any client's command timeout.
            max: z.number().positive().max(30).default(5),
            hooks: z.array(z.enum(TARPIT_HOOKS)).default([...TARPIT_HOOKS]),
          })
          .strict(),
      ])
      .default({ below: 0, seconds_per_point: 1, max: 5, hooks: [...TARPIT_HOOKS] }),
    limit_recipients: z
      .union([z.literal(false), z.object({ below: z.number().default(-3), max: z.number().int().min(1).default(1) }).strict()])
      .default({ below: -3, max: 1 }),
    immunity: z
      .object({ above: z.number().default(2), plugins: z.array(z.string().min(1)).default(['greylisting']) })
      .strict()
      .default({ above: 2, plugins: ['greylisting'] }),
    history: z
      .union([
        z.literal(false),
        z
          .object({
            expire_days: z.number().positive().default(historyDefaults.expire_days),
            min_connections: z.number().int().min(1).default(historyDefaults.min_connections),
            good_above: z.number().default(historyDefaults.good_above),
            bad_below: z.number().default(historyDefaults.bad_below),
            points: z
              .object({
                all_good: z.number().default(2),
                good: z.number().default(1),
                bad: z.number().default(-1),
                all_bad: z.number().default(-3),
              })
              .strict()
              .default(historyDefaults.points),
          })
          .strict(),
      ])
      .default(historyDefaults),
  })
  .strict()
  .refine((o) => o.reject_below === null || o.defer_below === null || o.defer_below > o.reject_below, {
    path: ['defer_below'],
    message: 'must be above reject_below (defer the middle range, reject the worst)',
  })
  .refine((o) => o.history === false || o.history.good_above >= o.history.bad_below, {
    path: ['history', 'good_above'],
    message: 'must not be below history.bad_below',
  });

type Options = z.infer<typeof optionsSchema>;

/** The client's record in the store. */
export interface History {
  good: number;
  bad: number;
  total: number;
  /** Milliseconds since the epoch; 0 when never seen. */
  last: number;
}

/** What karma keeps per connection, in conn.notes.karma. */
export interface KarmaState {
  /** The client this is about (behind Postfix a connection may describe several in turn). */
  addr: string;
  score: number;
  /** Points from the history (part of score). */
  history: number;
  /** Points from rules and rejections (part of score). */
  awards: number;
  /** `rule#@instance` keys already counted. */
  counted: string[];
  /** Plugins this karma made immune (and may take back). */
  granted: string[];
  historyRecord?: History;
  recorded: boolean;
  /** A relay, authenticated or allow-listed client (or sender) was seen: never judged, never recorded. */
  protected: boolean;
}

interface CompiledRule extends KarmaRule {
  index: number;
  test?: string | RegExp;
  label: string;
}

function compileMatch(m: string | undefined): string | RegExp | undefined {
  if (m === undefined) return undefined;
  const re = /^\/(.*)\/([a-z]*)$/s.exec(m);
  return re ? new RegExp(re[1]!, re[2]) : m;
}

/** History points by the rules in the header comment; undefined for too little history. */
export function historyPoints(h: History, cfg: Exclude<Options['history'], false>): { points: number; label: string } | undefined {
  if (h.total < cfg.min_connections) return undefined;
  if (h.bad === 0 && h.good > 0) return { points: cfg.points.all_good, label: 'all good' };
  if (h.good === 0 && h.bad > 0) return { points: cfg.points.all_bad, label: 'all bad' };
  if (h.good > h.bad) return { points: cfg.points.good, label: 'good' };
  if (h.bad > h.good) return { points: cfg.points.bad, label: 'bad' };
  return undefined;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export default definePlugin({
  description: 'reputation score from plugin results and client history: reject, tarpit, limit, or grant immunity',
  defaults: { immune: false, timeout: 45 },
  options: optionsSchema,
  create(opts, env) {
    const store = env.store();
    const rules: CompiledRule[] = [...opts.rules, ...opts.extra_rules].map((rule, index) => ({
      ...rule,
      index,
      test: compileMatch(rule.match),
      label: `${rule.plugin} ${rule.kind}${rule.match ? ` ${rule.match}` : ''}`,
    }));
    const hist = opts.history;
    const ttl = hist ? hist.expire_days * 86400 : 0;
    /** The state of each connection, also after a new XFORWARD client reset its notes (to record the old one). */
    const live = new WeakMap<ConnectionState, KarmaState>();

    const fresh = (ctx: HookContext): KarmaState => {
      const s: KarmaState = { addr: ctx.conn.client.addr, score: 0, history: 0, awards: 0, counted: [], granted: [], recorded: false, protected: false };
      ctx.conn.notes[ctx.name] = s;
      live.set(ctx.conn, s);
      return s;
    };
    const state = (ctx: HookContext): KarmaState => (ctx.conn.notes[ctx.name] as KarmaState | undefined) ?? fresh(ctx);

    const isProtected = (ctx: HookContext): boolean =>
      ctx.conn.relayClient ||
      !!ctx.conn.auth ||
      ctx.conn.immunity.all ||
      ctx.conn.immunity.plugins.has(ctx.name) ||
      !!ctx.txn?.immunity.all ||
      !!ctx.txn?.immunity.plugins.has(ctx.name);

    const protectedClient = (ctx: HookContext): boolean => {
      if (!isProtected(ctx)) return false;
      state(ctx).protected = true;
      return true;
    };

    const instancesOf = (plugin: string, stores: Results[]): string[] => {
      const found = new Set<string>();
      for (const st of stores) {
        for (const id of st.plugins()) if (id !== ctx0Name && (id === plugin || id.startsWith(`${plugin}:`))) found.add(id);
      }
      return [...found];
    };
    const ctx0Name = env.name;

    const award = (ctx: HookContext, s: KarmaState, points: number, label: string) => {
      s.awards += points;
      s.score = s.history + s.awards;
      ctx.result({ [points > 0 ? 'pass' : 'fail']: `${label} (${points > 0 ? '+' : ''}${points})` });
    };

    /** Counts every rule whose result has arrived since the last look. */
    const evaluate = (ctx: HookContext): KarmaState => {
      const s = state(ctx);
      const stores = ctx.txn ? [ctx.conn.results, ctx.txn.results] : [ctx.conn.results];
      for (const rule of rules) {
        for (const id of instancesOf(rule.plugin, stores)) {
          const key = `${rule.index}@${id}`;
          if (s.counted.includes(key)) continue;
          if (!stores.some((st) => st.has(id, rule.kind as ResultKind, rule.test))) continue;
          s.counted.push(key);
          award(ctx, s, rule.points, rule.reason ?? (id === rule.plugin ? rule.label : `${rule.label.replace(rule.plugin, id)}`));
        }
      }
      updateImmunity(ctx, s);
      return s;
    };

    const updateImmunity = (ctx: HookContext, s: KarmaState) => {
      const { above, plugins } = opts.immunity;
      if (!plugins.length) return;
      if (s.score > above) {
        const added = plugins.filter((p) => !ctx.conn.immunity.plugins.has(p));
        if (!added.length) return;
        for (const p of added) ctx.conn.immunity.plugins.add(p);
        s.granted.push(...added);
        ctx.result({ msg: `immunity for ${added.join(',')} (score ${s.score})` });
      } else if (s.granted.length) {
        for (const p of s.granted) ctx.conn.immunity.plugins.delete(p);
        ctx.result({ msg: `immunity for ${s.granted.join(',')} withdrawn (score ${s.score})` });
        s.granted = [];
      }
    };

    const tarpitDelay = (score: number): number => {
      const t = opts.tarpit;
      if (t === false || score >= t.below) return 0;
      return Math.min(t.max, (t.below - score) * t.seconds_per_point);
    };

    const text = (score: number) => opts.message.replace(/\{score\}/g, String(score));

    /** The verdict for the current score at a deciding hook, tarpit included. */
    const act = async (ctx: HookContext, hook: HookName): Promise<Verdict | undefined> => {
      const s = evaluate(ctx);
      if (protectedClient(ctx)) return;
      let verdict: Verdict | undefined;
      if ((REJECT_HOOKS as readonly string[]).includes(hook) && opts.reject_at.includes(hook as (typeof REJECT_HOOKS)[number])) {
        if (opts.reject_below !== null && s.score < opts.reject_below) verdict = deny(text(s.score), '5.7.1');
        else if (opts.defer_below !== null && s.score < opts.defer_below) verdict = denysoft(text(s.score), '4.7.1');
      }
      const limit = opts.limit_recipients;
      if (!verdict && hook === 'rcpt' && limit !== false && s.score < limit.below && (ctx.txn?.recipients.length ?? 0) >= limit.max) {
        verdict = { decision: Decision.DENYSOFT, code: 452, enhanced: '4.5.3', message: `Too many recipients for karma ${s.score}, send the others later` };
      }
      if (opts.tarpit !== false && (opts.tarpit.hooks as readonly string[]).includes(hook)) {
        const seconds = tarpitDelay(s.score);
        if (seconds > 0) {
          ctx.log.debug(`tarpit ${hook}: ${seconds} s (score ${s.score})`);
          await sleep(seconds * 1000);
        }
      }
      if (verdict) ctx.result({ msg: `${hook}: ${verdict.decision} at score ${s.score}` });
      return verdict;
    };

    const readHistory = async (ctx: HookContext, s: KarmaState) => {
      if (hist === false || protectedClient(ctx)) return;
      const a = s.addr;
      let values: (string | undefined)[];
      try {
        values = await store.mget([`${a}|good`, `${a}|bad`, `${a}|total`, `${a}|last`]);
      } catch (err) {
        ctx.result({ err: `history: ${(err as Error).message}` });
        ctx.log.warn(`history of ${a} unavailable: ${(err as Error).message}`);
        return;
      }
      const [good, bad, total, last] = values.map((v) => Number(v ?? 0)) as [number, number, number, number];
      const h: History = { good, bad, total, last };
      s.historyRecord = h;
      const p = historyPoints(h, hist);
      ctx.result({ history: h });
      if (!p) return;
      s.history = p.points;
      s.score = s.history + s.awards;
      ctx.result({ [p.points > 0 ? 'pass' : p.points < 0 ? 'fail' : 'msg']: `history ${p.label} (${p.points > 0 ? '+' : ''}${p.points})` });
    };

    /** Adds the connection to the client's history (once). */
    const record = async (s: KarmaState, log: HookContext['log']) => {
      if (hist === false || s.recorded) return;
      s.recorded = true;
      if (s.protected || !s.addr) return;
      const own = s.awards; // without the history's points
      const outcome = own > hist.good_above ? 'good' : own < hist.bad_below ? 'bad' : 'neutral';
      const a = s.addr;
      try {
        await Promise.all([
          store.mincrBy(
            [
              [`${a}|total`, 1],
              [`${a}|good`, outcome === 'good' ? 1 : 0],
              [`${a}|bad`, outcome === 'bad' ? 1 : 0],
            ],
            ttl,
          ),
          store.set(`${a}|last`, String(clock.now()), ttl),
        ]);
        log.debug(`history of ${a}: ${outcome} connection (score ${own} without history)`);
      } catch (err) {
        log.warn(`history of ${a} not recorded: ${(err as Error).message}`);
      }
    };

    return {
      async connect(ctx) {
        // A new client on the same connection (another XFORWARD): the previous one's connection is over.
        const previous = live.get(ctx.conn);
        if (previous && previous !== ctx.conn.notes[ctx.name]) await record(previous, ctx.log);
        const s = fresh(ctx);
        await readHistory(ctx, s);
        return act(ctx, 'connect');
      },
      helo: (ctx) => act(ctx, 'helo'),
      ehlo: (ctx) => act(ctx, 'ehlo'),
      mail: (ctx) => act(ctx, 'mail'),
      rcpt: (ctx) => act(ctx, 'rcpt'),
      data: (ctx) => act(ctx, 'data'),
      async data_post(ctx) {
        const v = await act(ctx, 'data_post');
        ctx.result({ msg: `score ${state(ctx).score}` });
        return v;
      },
      // What plugins listed after karma recorded at the end of a transaction (spamassassin at
      // data_post) is counted here, while the transaction's results are still there.
      reset_transaction(ctx) {
        evaluate(ctx);
      },
      deny(ctx, info) {
        if (info.plugin === ctx.name) return;
        const s = state(ctx);
        const temp = isTemporary(info.verdict.decision);
        const points = temp ? opts.rejection_points.temp : opts.rejection_points.perm;
        if (isDeny(info.verdict.decision) && points !== 0) award(ctx, s, points, `rejected by ${info.plugin} at ${info.hook}`);
        evaluate(ctx);
      },
      async disconnect(ctx) {
        const s = evaluate(ctx);
        protectedClient(ctx);
        await record(s, ctx.log);
      },
    };
  },
});
