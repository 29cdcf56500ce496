import type { Logger } from '../log';
import type { Address, ConnectionState, Immunity, TransactionState } from '../session/state';
import type { ResultInput } from '../session/results';
import { HOOK_NAMES, type HookArgs, type HookContext, type HookFn, type HookName, type MetaInfo, type RejectType } from './api';
import { Decision, isDeny, toVerdict, type Verdict } from './decision';
import { hooksOf, type PluginInstance } from './loader';

/** The hook's final word and who said it (undefined when every plugin declined). */
export interface HookOutcome {
  verdict: Verdict;
  plugin?: string;
  /** The verdict is a rejection held back from earlier, delivered now (see RunScope.heldBack). */
  held?: DeferredVerdict;
}

/** A rejection held back (plugin option `reject: defer`, or a connection verdict behind Postfix). */
export interface DeferredVerdict {
  plugin: string;
  hook: HookName;
  verdict: Verdict;
  /** The deny meta-hook already heard of it (otherwise it does when the rejection is delivered). */
  announced?: boolean;
}

/** What a run of the chain needs to know about the session it runs for. */
export interface RunScope {
  conn: ConnectionState;
  txn: TransactionState | undefined;
  log: Logger;
  /** Holds a rejection for later delivery (the session decides where). */
  defer(d: DeferredVerdict): void;
  /**
   * A rejection held back earlier that is due at this hook, if any. It is asked
   * once the plugins placed before the first immune-able one have run (and
   * before any verdict is taken), so the immunity those grant at this very
   * command (the whitelist's senders and recipients) counts.
   */
  heldBack?(): DeferredVerdict | undefined;
}

/** Hooks whose return value means nothing: every plugin runs, errors are only logged. */
const NOTIFY_HOOKS = new Set<HookName>(['reset_transaction', 'disconnect', 'deny', 'ok']);

/** A plugin that crashed or timed out never lets mail through: the default is a temporary failure. */
export const PLUGIN_FAILURE: Verdict = Object.freeze({
  decision: Decision.DENYSOFT,
  code: 451,
  enhanced: '4.3.0',
  message: 'Temporary local problem, please try again later',
});

const REJECT_TYPE: Record<RejectType, Decision> = {
  temp: Decision.DENYSOFT,
  perm: Decision.DENY,
  disconnect: Decision.DENY_DISCONNECT,
  temp_disconnect: Decision.DENYSOFT_DISCONNECT,
};

export function applyRejectType(v: Verdict, type: RejectType | undefined): Verdict {
  if (!type || !isDeny(v.decision) || REJECT_TYPE[type] === v.decision) return v;
  // An explicit code/enhanced code belongs to the old decision's class (4xx vs 5xx).
  return { decision: REJECT_TYPE[type], message: v.message };
}

/** Immunity for `dnsbl` covers every instance (`dnsbl:spamhaus`); for `dnsbl:spamhaus` only that one. */
function covers(immunity: Immunity | undefined, plugin: string): boolean {
  if (!immunity) return false;
  if (immunity.all || immunity.plugins.has(plugin)) return true;
  const colon = plugin.indexOf(':');
  return colon > 0 && immunity.plugins.has(plugin.slice(0, colon));
}

/** `rcpt`: the recipient of the RCPT being decided, whose own immunity applies to that RCPT only. */
export function isImmune(conn: ConnectionState, txn: TransactionState | undefined, plugin: string, rcpt?: Address): boolean {
  return conn.relayClient || covers(conn.immunity, plugin) || covers(txn?.immunity, plugin) || covers(rcpt?.immunity, plugin);
}

class TimeoutError extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * The plugin chain: runs a hook's plugins in configured order, first
 * non-DECLINED decision wins (tapable's AsyncSeriesBailHook), with each
 * plugin's timeout, failure policy, immunity and reject options applied
 * here so that no plugin has to implement them.
 */
export class PluginChain {
  private readonly byHook = new Map<HookName, PluginInstance[]>();

  constructor(readonly plugins: readonly PluginInstance[]) {
    for (const hook of HOOK_NAMES) this.byHook.set(hook, plugins.filter((p) => typeof p.hooks[hook] === 'function'));
  }

  has(hook: HookName): boolean {
    return (this.byHook.get(hook)?.length ?? 0) > 0;
  }

  /** Printable order per hook (`prequeue --check`). */
  describe(): string {
    const lines: string[] = [];
    lines.push(`plugins (${this.plugins.length}):`);
    for (const p of this.plugins) {
      const c = p.common;
      const opts = [
        `reject=${c.reject}`,
        c.reject_type ? `reject_type=${c.reject_type}` : '',
        `immune=${c.immune}`,
        `timeout=${c.timeout}s`,
        `on_error=${c.on_error}`,
      ].filter(Boolean);
      lines.push(`  ${p.id}  [${hooksOf(p).join(', ')}]  ${opts.join(' ')}`);
      lines.push(`      ${p.description}`);
    }
    lines.push('hooks:');
    for (const hook of HOOK_NAMES) {
      const list = this.byHook.get(hook)!;
      if (list.length) lines.push(`  ${hook}: ${list.map((p) => p.id).join(' -> ')}`);
    }
    return lines.join('\n');
  }

  private context(p: PluginInstance, scope: RunScope): HookContext {
    return {
      conn: scope.conn,
      txn: scope.txn,
      log: p.log.child({ conn: scope.conn.id, ...(scope.txn ? { txn: scope.txn.id } : {}) }),
      name: p.id,
      result: (input: ResultInput) => (scope.txn ?? scope.conn).results.add(p.id, input),
    };
  }

  private async call<H extends HookName>(p: PluginInstance, hook: H, scope: RunScope, args: HookArgs[H]): Promise<Verdict | Error> {
    const fn = p.hooks[hook] as HookFn<H>;
    try {
      return toVerdict(await withTimeout(Promise.resolve().then(() => fn(this.context(p, scope), ...args)), p.common.timeout * 1000));
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      scope.log.error(`plugin ${p.id} failed in ${hook}: ${e.message}`, { plugin: p.id, hook, policy: p.common.on_error });
      (scope.txn ?? scope.conn).results.add(p.id, { err: `${hook}: ${e instanceof TimeoutError ? 'timeout' : e.message}` });
      return e;
    }
  }

  /** Runs a deciding hook: returns the first non-DECLINED verdict, after the plugin's reject options. */
  async run<H extends HookName>(hook: H, scope: RunScope, ...args: HookArgs[H]): Promise<HookOutcome> {
    if (NOTIFY_HOOKS.has(hook)) {
      await this.notify(hook, scope, ...args);
      return { verdict: { decision: Decision.DECLINED } };
    }
    const rcpt = hook === 'rcpt' ? (args[0] as Address) : undefined;
    let askHeld = scope.heldBack;
    const held = (): HookOutcome | undefined => {
      const d = askHeld?.();
      askHeld = undefined;
      return d && { verdict: d.verdict, plugin: d.plugin, held: d };
    };
    for (const p of this.byHook.get(hook)!) {
      if (p.common.immune) {
        const h = held();
        if (h) return h;
        if (isImmune(scope.conn, scope.txn, p.id, rcpt)) {
          (scope.txn ?? scope.conn).results.add(p.id, { skip: `${hook}: immune` });
          continue;
        }
      }
      const result = await this.call(p, hook, scope, args);
      let verdict: Verdict;
      if (result instanceof Error) {
        if (p.common.on_error === 'skip') continue;
        verdict = PLUGIN_FAILURE;
      } else {
        verdict = result;
      }
      if (verdict.decision === Decision.DECLINED) continue;
      if (isDeny(verdict.decision) && !(result instanceof Error)) {
        verdict = applyRejectType(verdict, p.common.reject_type);
        if (p.common.reject === false) {
          scope.log.info(`plugin ${p.id} would reject at ${hook} (reject: false): ${verdict.message ?? verdict.decision}`);
          (scope.txn ?? scope.conn).results.add(p.id, { msg: `${hook}: not rejected (log only)` });
          continue;
        }
        if (p.common.reject === 'defer') {
          scope.defer({ plugin: p.id, hook, verdict });
          continue;
        }
      }
      const h = held();
      if (h) return h;
      scope.log.debug(`${hook}: ${p.id} returned ${verdict.decision}`, { message: verdict.message });
      await this.meta(hook, p.id, verdict, scope);
      return { verdict, plugin: p.id };
    }
    return held() ?? { verdict: { decision: Decision.DECLINED } };
  }

  /** The deny/ok meta-hooks: told about a decision, cannot change it. */
  async meta(hook: HookName, plugin: string, verdict: Verdict, scope: RunScope): Promise<void> {
    if (hook === 'deny' || hook === 'ok') return;
    const info: MetaInfo = { hook: hook as MetaInfo['hook'], plugin, verdict };
    if (isDeny(verdict.decision)) await this.notify('deny', scope, info);
    else if (verdict.decision === Decision.OK) await this.notify('ok', scope, info);
  }

  /** Runs every plugin of a notification hook; return values are ignored. */
  async notify<H extends HookName>(hook: H, scope: RunScope, ...args: HookArgs[H]): Promise<void> {
    for (const p of this.byHook.get(hook)!) await this.call(p, hook, scope, args);
  }

  async shutdown(): Promise<void> {
    await Promise.allSettled(this.plugins.map((p) => p.hooks.shutdown?.()));
  }
}
