import type { z } from 'zod';
import type { HookResult, Verdict } from './decision';
import type { Address, ConnectionState, TransactionState } from '../session/state';
import type { Message, MessageHeaders } from '../message/types';
import type { DnsResolver } from '../dns/resolver';
import type { KvStore } from '../store/types';

/** Hooks in the order an SMTP session meets them; the meta-hooks deny and ok come last. */
export const HOOK_NAMES = [
  'connect',
  'helo',
  'ehlo',
  'auth',
  'auth_plain',
  'auth_login',
  'auth_cram_md5',
  'mail',
  'rcpt',
  'data',
  'data_headers_end',
  'data_post',
  'queue',
  'reset_transaction',
  'vrfy',
  'noop',
  'unrecognized_command',
  'quit',
  'disconnect',
  'deny',
  'ok',
] as const;

export type HookName = (typeof HOOK_NAMES)[number];

/** What the deny and ok meta-hooks are told. */
export interface MetaInfo {
  hook: Exclude<HookName, 'deny' | 'ok'>;
  plugin: string;
  verdict: Verdict;
}

export type AuthMechanism = 'PLAIN' | 'LOGIN' | 'CRAM-MD5';

/**
 * What an auth hook checks (qpsmtpd's $mechanism, $user, $passClear, $passHash,
 * $ticket). OK authenticates, DECLINED leaves it to the next plugin, DENY fails
 * at once, DENYSOFT is a temporary failure (454). The specific hook
 * (auth_plain, auth_login, auth_cram_md5) runs first, then the generic `auth`;
 * a plugin with the generic hook must handle every mechanism (or decline).
 */
export interface AuthRequest {
  mechanism: AuthMechanism;
  /** The authentication identity (PLAIN authcid, LOGIN user name, CRAM-MD5 user). */
  user: string;
  /** PLAIN and LOGIN: the cleartext password. */
  password?: string;
  /** PLAIN: the authorization identity, when the client gave one (the core only accepts it equal to `user`). */
  authzid?: string;
  /** CRAM-MD5: the challenge sent, and the client's answer (lower-case hex); see src/auth/cram-md5.ts to check it. */
  challenge?: string;
  response?: string;
}

/** Hook-specific arguments, after the context. */
export interface HookArgs {
  connect: [];
  helo: [host: string];
  ehlo: [host: string];
  auth: [request: AuthRequest];
  auth_plain: [request: AuthRequest];
  auth_login: [request: AuthRequest];
  auth_cram_md5: [request: AuthRequest];
  mail: [sender: Address];
  rcpt: [recipient: Address];
  data: [];
  /** Fires while the body is still arriving; a rejection is delivered at end of data. */
  data_headers_end: [headers: MessageHeaders];
  data_post: [message: Message];
  queue: [message: Message];
  reset_transaction: [];
  vrfy: [argument: string];
  noop: [];
  unrecognized_command: [verb: string, args: string];
  quit: [];
  disconnect: [];
  deny: [info: MetaInfo];
  ok: [info: MetaInfo];
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface PluginLogger {
  error(msg: string, meta?: Record<string, unknown>): void;
  warn(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
  debug(msg: string, meta?: Record<string, unknown>): void;
}

export interface HookContext {
  conn: ConnectionState;
  /** The current transaction: present from MAIL until it ends. */
  txn: TransactionState | undefined;
  log: PluginLogger;
  /** This plugin's instance name (e.g. `dnsbl:spamhaus`), used as its results key. */
  readonly name: string;
  /** Record a result for this plugin in the transaction's store (the connection's if none). */
  result(input: import('../session/results').ResultInput): void;
}

export type HookFn<H extends HookName> = (ctx: HookContext, ...args: HookArgs[H]) => HookResult | Promise<HookResult>;

export type PluginHooks = { [H in HookName]?: HookFn<H> } & {
  /** Called when the plugin is unloaded (reload, shutdown) to release timers, sockets, files. */
  shutdown?(): void | Promise<void>;
};

export type RejectMode = boolean | 'defer';
export type RejectType = 'temp' | 'perm' | 'disconnect' | 'temp_disconnect';

/** Options every plugin accepts, handled by the core (plugins never read them). */
export interface CommonOptions {
  /** true: reject as the plugin decided; false: log only; 'defer': deliver the rejection later (see deferred_rejection). */
  reject: RejectMode;
  /** Overrides the kind of rejection: temp (4xx), perm (5xx), disconnect (5xx + close), temp_disconnect (4xx + close). */
  reject_type?: RejectType;
  /** This plugin's log level. */
  loglevel?: LogLevel;
  /** Whether relay clients and allow-listed clients/senders skip this plugin. */
  immune: boolean;
  /** Seconds a hook may take; past it the hook counts as failed. */
  timeout: number;
  /** What a hook that throws or times out means: defer (451, the default) or skip (as if DECLINED). */
  on_error: 'defer' | 'skip';
}

export interface PluginEnv {
  /** Instance name as written in the config (`name` or `name:instance`). */
  name: string;
  /** Directory of the config file, to resolve relative paths in options. */
  configDir: string;
  mode: 'postfix' | 'standalone';
  /** The config's `hostname` (our name in greetings and trace headers); absent in unit tests. */
  hostname?: string;
  log: PluginLogger;
  /** The shared resolver (config `dns:`); use it for every lookup so answers are cached once. */
  dns: DnsResolver;
  /**
   * The persistent store (config `store:`), keys prefixed with `namespace|`
   * (default: this instance's name). Nothing is opened until the first
   * operation, so calling it in create() costs nothing. Operations reject with
   * a StoreError when the store fails; never read that as "no entry".
   */
  store(namespace?: string): KvStore;
}

export interface PluginDefinition<S extends z.ZodType = z.ZodType> {
  /** One line: what the plugin checks. The full doc is the module's header comment. */
  description: string;
  /** Schema of the plugin's own options (validated at load; unknown keys are an error). */
  options?: S;
  /** Defaults for the common options where the plugin's sensible default differs. */
  defaults?: Partial<CommonOptions>;
  create(options: z.infer<S>, env: PluginEnv): PluginHooks | Promise<PluginHooks>;
}

/** Identity function that gives plugin authors type inference for their options. */
export function definePlugin<S extends z.ZodType>(def: PluginDefinition<S>): PluginDefinition<S> {
  return def;
}
