/**
 * auth_ldap — SMTP AUTH (PLAIN and LOGIN) against an LDAP directory, by
 * binding as the user with the password the client gave.
 *
 * The directory checks the password itself (whatever hash it stores, account
 * locks and password policies included); prequeue never reads userPassword.
 * CRAM-MD5 is not supported: it never reveals the password, and a bind needs
 * it (list auth_flat_file for CRAM-MD5 users).
 *
 * Two ways to find the entry to bind as:
 *
 * - DN template (`bind_dn`): the DN is built from the login,
 *   `uid=%u,ou=people,dc=example,dc=test`. `%u` is the whole login, `%n` its
 *   local part (before the last `@`), `%d` its domain (after it), `%%` a `%`.
 *   Each value is escaped as an RFC 4514 attribute value (`,` `+` `"` `\` `<`
 *   `>` `;` `=`, a leading `#` or space, a trailing space, control characters),
 *   so a login can never add an RDN or leave its attribute value. A login
 *   without `@` has no `%d`: a template using `%d` refuses it.
 * - Search, then bind (`base` + `filter`): bind as the service account
 *   (`search_bind_dn` with `search_bind_password` or
 *   `search_bind_password_file`; anonymously when no `search_bind_dn` is
 *   given), search `base` with `filter`, e.g.
 *   `(&(objectClass=inetOrgPerson)(|(uid=%u)(mail=%u)))`, the values escaped
 *   per RFC 4515 (`*` `(` `)` `\` NUL as \2a \28 \29 \5c \00), so a login
 *   cannot widen the filter. Exactly one entry must match; then the same
 *   connection binds as that entry's DN with the user's password. Two or more
 *   matches refuse the login (and log a warning): guessing which one is meant
 *   would let one user's password open another's account.
 *
 * Decisions (the core turns them into 235 / 535 / 454):
 *   OK        the user's bind succeeded.
 *   DENY      wrong password (LDAP result 49 invalidCredentials), no such
 *             user, several matching entries, or a bind the server refuses
 *             for the account (inappropriateAuthentication 48,
 *             unwillingToPerform 53, e.g. a locked account). Or DECLINED, see
 *             `decline_unknown`.
 *   DENYSOFT  the directory could not answer: no server reachable, a
 *             connection or TLS failure, a timeout, busy/unavailable, or any
 *             other result code. Clients retry later (454 4.7.0); an outage
 *             never counts as a wrong password, and never turns into "let
 *             another plugin accept". Answers that point at the setup rather
 *             than at the user are DENYSOFT too, logged as errors, without
 *             trying the next URL: the service account refused (49),
 *             confidentialityRequired (13: use TLS), invalidDNSyntax (34),
 *             insufficientAccess (50: the service account may not search
 *             there), filterError (87).
 * A login with an empty password never reaches the directory (a simple bind
 * with a DN and no password is an "unauthenticated bind" that succeeds on many
 * servers): DENY. The core refuses those before the hooks too.
 *
 * Options:
 *   url: string | string[]     ldap://host[:port] or ldaps://host[:port] (required). Several are tried in
 *                              order while a server cannot be reached or times out (failover); a server
 *                              that answered (even "wrong password") ends the attempt.
 *   starttls: boolean          upgrade ldap:// connections with StartTLS before any bind (default false);
 *                              a server that refuses it counts as unreachable. Not with ldaps://.
 *   tls:                       for ldaps:// and StartTLS
 *     ca: string               PEM file of the CA(s) to trust, relative to the config directory
 *                              (default: Node's built-in CA list)
 *     reject_unauthorized: bool  verify the server certificate and its name (default true)
 *     servername: string       DNS name to expect in the certificate and send as SNI (default: the URL's
 *                              host; an IP address in the URL is checked against the certificate's IP SANs)
 *   connect_timeout: number    seconds to open a connection, TLS handshake included (default 5)
 *   operation_timeout: number  seconds each LDAP operation (StartTLS, bind, search) may take (default 5).
 *                              A server that stops answering costs at most connect_timeout +
 *                              operation_timeout before the next URL is tried. (`timeout` is the
 *                              core's limit for the whole hook, 30 s by default; past it the client
 *                              gets the same 454, and the attempt still closes its connection.)
 *   bind_dn: string            DN template (mode 1)
 *   base: string               search base (mode 2)
 *   filter: string             search filter template, with %u %n %d %% as above (mode 2)
 *   scope: base | one | sub    search scope (default sub)
 *   search_bind_dn: string     service account for the search (default: anonymous search)
 *   search_bind_password: string   its password
 *   search_bind_password_file: string  or a file holding it (first line), relative to the config
 *                              directory; read at start and on reload
 *   decline_unknown: boolean   search mode only: a login that matches no entry is DECLINED instead of
 *                              DENY, so the next auth plugin (e.g. auth_flat_file for service
 *                              accounts that are not in the directory) may accept it (default false).
 *                              A wrong password for a user who does exist is still DENY. Not
 *                              available with bind_dn: an LDAP server answers 49 both for an unknown DN
 *                              and a wrong password, so the two cannot be told apart.
 *
 * Exactly one of bind_dn or base + filter must be set. Each attempt uses its
 * own connection (so concurrent logins never share a bind state), closed with
 * an unbind when the attempt ends; a timeout destroys the socket. The plugin
 * is not immune by default (immune: false): a relay client that tries AUTH
 * must still be checked, otherwise its AUTH would always fail.
 *
 * The bind name is always a DN (the template's result, or the entry found):
 * Active Directory users are found in search mode, e.g. `filter:
 * (&(objectClass=user)(userPrincipalName=%u))` or `(sAMAccountName=%n)`.
 *
 * Needs: an LDAP server (OpenLDAP, 389-ds, Active Directory...), and the
 * `ldapts` client (npm). Results: `pass: user` with details `dn` and `server`,
 * `fail: ...` for refused logins, `skip: ...` for declined unknown users,
 * `err: ...` for directory failures.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { isAbsolute, join } from 'node:path';
import tls from 'node:tls';
import { Client, FilterParser, ResultCodeError, type ClientOptions } from 'ldapts';
import { z } from 'zod';
import { definePlugin, type AuthRequest, type HookContext, type PluginEnv } from '../src/plugin/api';
import { declined, deny, denysoft, ok, type Verdict } from '../src/plugin/decision';

const seconds = (def: number) => z.number().positive().max(120).default(def);

const urlSchema = z.string().regex(/^ldaps?:\/\/[^/?#]+\/?$/i, 'expected ldap://host[:port] or ldaps://host[:port]');

const optionsSchema = z
  .object({
    url: z.union([urlSchema, z.array(urlSchema).min(1)]),
    starttls: z.boolean().default(false),
    tls: z
      .object({
        ca: z.string().min(1).optional(),
        reject_unauthorized: z.boolean().default(true),
        servername: z
          .string()
          .min(1)
          .refine((v) => net.isIP(v) === 0, 'a DNS name (an IP address is checked from the URL)')
          .optional(),
      })
      .strict()
      .default({ reject_unauthorized: true }),
    connect_timeout: seconds(5),
    operation_timeout: seconds(5),
    bind_dn: z.string().min(1).optional(),
    base: z.string().optional(),
    filter: z.string().min(1).optional(),
    scope: z.enum(['base', 'one', 'sub']).default('sub'),
    search_bind_dn: z.string().min(1).optional(),
    search_bind_password: z.string().min(1).optional(),
    search_bind_password_file: z.string().min(1).optional(),
    decline_unknown: z.boolean().default(false),
  })
  .strict()
  .superRefine((o, ctx) => {
    const issue = (message: string, path: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, message, path: [path] });
    const search = o.base !== undefined || o.filter !== undefined;
    if (o.bind_dn !== undefined && search) issue('set either bind_dn or base + filter, not both', 'bind_dn');
    if (o.bind_dn === undefined && !search) issue('set bind_dn (DN template) or base + filter (search, then bind)', 'bind_dn');
    if (search && o.base === undefined) issue('search mode needs base', 'base');
    if (search && o.filter === undefined) issue('search mode needs filter', 'filter');
    if (o.bind_dn !== undefined && !/%[und]/.test(o.bind_dn)) issue('the DN template must contain %u, %n or %d', 'bind_dn');
    if (o.filter !== undefined && !/%[und]/.test(o.filter)) issue('the filter must contain %u, %n or %d', 'filter');
    for (const [key, tpl] of [['bind_dn', o.bind_dn], ['filter', o.filter]] as const) {
      const bad = tpl?.match(/%[^und%]|%$/);
      if (bad) issue(`unknown placeholder '${bad[0]}' (use %u, %n, %d or %%)`, key);
    }
    if (o.bind_dn !== undefined && (o.search_bind_dn || o.search_bind_password || o.search_bind_password_file))
      issue('search_bind_* only apply to search mode (base + filter)', 'search_bind_dn');
    if (o.search_bind_password && o.search_bind_password_file) issue('set search_bind_password or search_bind_password_file, not both', 'search_bind_password');
    if (o.search_bind_dn && !o.search_bind_password && !o.search_bind_password_file)
      issue('search_bind_dn needs search_bind_password or search_bind_password_file', 'search_bind_dn');
    if (!o.search_bind_dn && (o.search_bind_password || o.search_bind_password_file))
      issue('a search bind password without search_bind_dn', 'search_bind_password');
    if (o.decline_unknown && o.bind_dn !== undefined)
      issue('decline_unknown needs search mode: with bind_dn an unknown user and a wrong password look the same (result 49)', 'decline_unknown');
    const urls = Array.isArray(o.url) ? o.url : [o.url];
    if (o.starttls && urls.some((u) => /^ldaps:/i.test(u))) issue('starttls is for ldap:// URLs; ldaps:// is TLS from the start', 'starttls');
  });

type Options = z.infer<typeof optionsSchema>;

/** RFC 4514 attribute value escaping: the value stays one value of one RDN. */
export function escapeDnValue(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    const code = ch.charCodeAt(0);
    if (code < 0x20 || code === 0x7f) out += '\\' + code.toString(16).padStart(2, '0');
    else if (',+"\\<>;='.includes(ch)) out += '\\' + ch;
    else if ((ch === '#' || ch === ' ') && i === 0) out += '\\' + ch;
    else if (ch === ' ' && i === value.length - 1) out += '\\ ';
    else out += ch;
  }
  return out;
}

/** RFC 4515 assertion value escaping: the value can only ever be compared, never read as filter syntax. */
export function escapeFilterValue(value: string): string {
  return value.replace(/[*()\\\0]/g, (c) => '\\' + c.charCodeAt(0).toString(16).padStart(2, '0'));
}

/** ldapts' parser accepts some malformed filters (a missing ')'), so the nesting is checked here too. */
function checkFilter(filter: string): void {
  let depth = 0;
  for (let i = 0; i < filter.length; i++) {
    const c = filter[i];
    if (c === '\\') i += 2;
    else if (c === '(') depth++;
    else if (c === ')' && --depth < 0) break;
    if (depth === 0 && i < filter.length - 1) throw new Error(`filter: unbalanced parentheses or text after the end: ${filter}`);
  }
  if (depth !== 0 || !filter.startsWith('(')) throw new Error(`filter: must be one parenthesised filter: ${filter}`);
  FilterParser.parseString(filter);
}

interface LoginParts {
  u: string;
  n: string;
  d: string | undefined;
}

function loginParts(user: string): LoginParts {
  const at = user.lastIndexOf('@');
  return at < 0 ? { u: user, n: user, d: undefined } : { u: user, n: user.slice(0, at), d: user.slice(at + 1) };
}

/** Fills %u %n %d %% with escaped values; undefined when the template needs a domain the login lacks. */
export function expand(template: string, user: string, escape: (v: string) => string): string | undefined {
  const p = loginParts(user);
  let missing = false;
  const out = template.replace(/%([und%])/g, (_m, k: string) => {
    if (k === '%') return '%';
    const v = p[k as keyof LoginParts];
    if (v === undefined || v === '') {
      missing = true;
      return '';
    }
    return escape(v);
  });
  return missing ? undefined : out;
}

/** The directory could not give an answer: try the next server, finally DENYSOFT. */
class Unavailable extends Error {}

interface Target {
  url: string;
  host: string;
  secure: boolean;
}

function parseTarget(url: string): Target {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { url, host, secure: u.protocol.toLowerCase() === 'ldaps:' };
}

function resolveFile(env: PluginEnv, file: string): string {
  return isAbsolute(file) ? file : join(env.configDir, file);
}

/** LDAP result codes that say "not these credentials" rather than "the directory has a problem". */
const CREDENTIALS_REFUSED = new Set([
  48, // inappropriateAuthentication
  49, // invalidCredentials
  53, // unwillingToPerform (OpenLDAP: disabled account, empty password)
]);

/**
 * Answers that come from a setup problem, not from the user or an outage:
 * confidentialityRequired (13: the server wants TLS), invalidDNSyntax (34: the
 * template or base), insufficientAccess (50: the search account may not search
 * there), filterError (87).
 */
const MISCONFIGURED = new Set([13, 34, 50, 87]);

function describe(err: unknown): string {
  if (err instanceof ResultCodeError) return `LDAP result ${err.code} (${err.message})`;
  return err instanceof Error ? err.message : String(err);
}

export default definePlugin({
  description: 'SMTP AUTH PLAIN/LOGIN by binding to an LDAP directory as the user',
  // A relay client's AUTH must be checked like anyone's (an immune plugin is skipped, and the AUTH would fail).
  defaults: { immune: false },
  options: optionsSchema,
  create(opts: Options, env) {
    const targets = (Array.isArray(opts.url) ? opts.url : [opts.url]).map(parseTarget);
    const ca = opts.tls.ca ? readFileSync(resolveFile(env, opts.tls.ca), 'utf8') : undefined;
    const servicePassword = opts.search_bind_password_file
      ? readFileSync(resolveFile(env, opts.search_bind_password_file), 'utf8').split(/\r?\n/)[0]!
      : opts.search_bind_password;
    if (opts.search_bind_dn && !servicePassword) throw new Error('search_bind_password_file: the first line is empty');
    // Catch a broken filter template at start rather than at the first login.
    if (opts.filter) checkFilter(expand(opts.filter, 'probe@example.test', escapeFilterValue)!);

    for (const t of targets) {
      const local = t.host === 'localhost' || t.host === '::1' || t.host.startsWith('127.');
      if (!t.secure && !opts.starttls && !local) env.log.warn(`auth_ldap: ${t.url} without starttls: users' passwords cross the network in the clear`);
    }

    const connectMs = opts.connect_timeout * 1000;
    const opMs = opts.operation_timeout * 1000;
    /** Sockets of attempts in progress, destroyed on shutdown. */
    const live = new Set<net.Socket>();

    const tlsOptions = (t: Target): tls.ConnectionOptions => {
      const o: tls.ConnectionOptions = { rejectUnauthorized: opts.tls.reject_unauthorized, minVersion: 'TLSv1.2' };
      if (ca) o.ca = ca;
      // servername is the name checked in the certificate (and SNI, which takes no IP address: without
      // it the check uses `host`, against IP SANs). `host` must stay the URL's: in tls.connect it also
      // overrides the address connected to.
      const name = opts.tls.servername ?? t.host;
      if (net.isIP(name) === 0) o.servername = name;
      o.host = t.host;
      return o;
    };

    /** A private connection for one attempt; all its sockets are tracked so none can outlive it. */
    function open(t: Target): { client: Client; sockets: Set<net.Socket> } {
      const sockets = new Set<net.Socket>();
      const track = <S extends net.Socket>(s: S): S => {
        sockets.add(s);
        live.add(s);
        s.once('close', () => {
          sockets.delete(s);
          live.delete(s);
        });
        return s;
      };
      const options: ClientOptions = {
        url: t.url,
        connectTimeout: connectMs,
        timeout: opMs,
        createConnection: ((...args: Parameters<typeof net.connect>) => track(net.connect(...args))) as typeof net.connect,
        createSecureConnection: ((...args: Parameters<typeof tls.connect>) => track(tls.connect(...args))) as typeof tls.connect,
      };
      // ldapts switches any URL to TLS when tlsOptions are given: only ldaps:// gets them here, StartTLS at startTLS().
      if (t.secure) options.tlsOptions = tlsOptions(t);
      return { client: new Client(options), sockets };
    }

    async function close(client: Client, sockets: Set<net.Socket>): Promise<void> {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([client.unbind(), new Promise((r) => (timer = setTimeout(r, 1000)))]);
      } catch {
        // The socket may already be gone (timeout, server closed): nothing left to say to it.
      } finally {
        clearTimeout(timer);
        for (const s of sockets) s.destroy();
      }
    }

    /** Connects (and StartTLS) on the first connect-ish operation; errors there are Unavailable. */
    async function step<T>(what: string, fn: () => Promise<T>, sockets: Set<net.Socket>): Promise<T> {
      let timer: NodeJS.Timeout | undefined;
      // ldapts bounds connects and each operation, but not the TLS handshake of StartTLS: this bounds everything.
      const limit = new Promise<never>((_r, reject) => {
        timer = setTimeout(() => {
          for (const s of sockets) s.destroy();
          reject(new Unavailable(`${what}: timed out`));
        }, connectMs + opMs);
      });
      try {
        return await Promise.race([fn(), limit]);
      } finally {
        clearTimeout(timer);
      }
    }

    const isResult = (err: unknown, codes: Set<number> | number): boolean =>
      err instanceof ResultCodeError && (typeof codes === 'number' ? err.code === codes : codes.has(err.code));

    /** One server: the verdict, or throws Unavailable to move on to the next server. */
    async function attempt(ctx: HookContext, t: Target, user: string, password: string): Promise<Verdict> {
      const { client, sockets } = open(t);
      try {
        // Anything failing before the first LDAP answer about the user means this server is of no use now.
        const unavailable = (what: string) => (err: unknown) => {
          if (err instanceof Unavailable) throw err;
          throw new Unavailable(`${what}: ${describe(err)}`);
        };
        if (opts.starttls) {
          await step('StartTLS', () => client.startTLS(tlsOptions(t)), sockets).catch(unavailable('StartTLS'));
        }

        let dn: string | undefined;
        if (opts.bind_dn !== undefined) {
          dn = expand(opts.bind_dn, user, escapeDnValue);
          if (dn === undefined) return unknown(ctx, user, 'the login has no domain for %d');
        } else {
          if (opts.search_bind_dn) {
            try {
              await step('service bind', () => client.bind(opts.search_bind_dn!, servicePassword), sockets);
            } catch (err) {
              // A refused service account is our configuration, not the user's fault: temporary, and loud.
              if (isResult(err, 49)) {
                ctx.log.error(`auth_ldap: the search account ${opts.search_bind_dn} was refused by ${t.url} (invalid credentials)`);
                return temporary(ctx, `service bind refused by ${t.url}`);
              }
              if (isResult(err, MISCONFIGURED)) return misconfigured(ctx, t, 'service bind', err);
              unavailable('service bind')(err);
            }
          }
          const filter = expand(opts.filter!, user, escapeFilterValue);
          if (filter === undefined) return unknown(ctx, user, 'the login has no domain for %d');
          let entries: { dn: string }[];
          try {
            const res = await step(
              'search',
              () => client.search(opts.base!, { scope: opts.scope, filter, attributes: ['1.1'], sizeLimit: 2, timeLimit: Math.ceil(opts.operation_timeout) }),
              sockets,
            );
            entries = res.searchEntries;
          } catch (err) {
            if (isResult(err, 4)) entries = [{ dn: '' }, { dn: '' }]; // sizeLimitExceeded: more than one matched
            else if (isResult(err, 32)) entries = []; // noSuchObject: the base is missing, so is the user
            else if (isResult(err, MISCONFIGURED)) return misconfigured(ctx, t, 'search', err);
            else return unavailable('search')(err);
          }
          if (entries.length === 0) return unknown(ctx, user, 'no entry matches');
          if (entries.length > 1) {
            ctx.log.warn(`auth_ldap: ${user} matches several entries under ${opts.base}; refusing (make the filter unique)`);
            ctx.result({ fail: `${user}: ambiguous (several entries)` });
            return deny();
          }
          dn = entries[0]!.dn;
        }

        // A DN equal to a SASL mechanism name would make ldapts do a SASL bind; a real DN always has an '='.
        if (!dn.includes('=')) {
          ctx.result({ fail: `${user}: not a DN` });
          return deny();
        }
        try {
          await step('bind', () => client.bind(dn!, password), sockets);
        } catch (err) {
          if (isResult(err, 32)) return unknown(ctx, user, 'no such entry');
          if (isResult(err, MISCONFIGURED)) return misconfigured(ctx, t, 'bind', err);
          if (isResult(err, CREDENTIALS_REFUSED)) {
            ctx.result({ fail: `${user}: ${describe(err)}`, dn });
            ctx.log.info(`auth_ldap: bind as ${dn} refused: ${describe(err)}`);
            return deny();
          }
          return unavailable('bind')(err);
        }
        ctx.result({ pass: user, dn, server: t.url });
        return ok();
      } finally {
        await close(client, sockets);
      }
    }

    function unknown(ctx: HookContext, user: string, why: string): Verdict {
      if (opts.decline_unknown) {
        ctx.result({ skip: `${user}: ${why}` });
        return declined();
      }
      ctx.result({ fail: `${user}: ${why}` });
      return deny();
    }

    /** The server answered, and what it said means our configuration (or its ACLs) is wrong: no failover, loud. */
    function misconfigured(ctx: HookContext, t: Target, what: string, err: unknown): Verdict {
      ctx.log.error(`auth_ldap: ${what} on ${t.url}: ${describe(err)}; check the plugin's options and the directory's ACLs`);
      return temporary(ctx, `${what}: ${describe(err)}`);
    }

    function temporary(ctx: HookContext, why: string): Verdict {
      ctx.result({ err: why });
      return denysoft('Authentication service temporarily unavailable, try again later');
    }

    async function check(ctx: HookContext, req: AuthRequest): Promise<Verdict> {
      const password = req.password;
      // Defence in depth: an empty password is an unauthenticated bind, which servers answer with success.
      if (!password) {
        ctx.result({ fail: `${req.user}: empty password` });
        return deny();
      }
      if (!req.user || req.user.includes('\0')) {
        ctx.result({ fail: 'unusable login name' });
        return deny();
      }
      const failures: string[] = [];
      for (const t of targets) {
        try {
          return await attempt(ctx, t, req.user, password);
        } catch (err) {
          if (!(err instanceof Unavailable)) throw err;
          failures.push(`${t.url}: ${err.message}`);
          ctx.log.warn(`auth_ldap: ${t.url} unavailable: ${err.message}`);
        }
      }
      return temporary(ctx, `directory unavailable (${failures.join('; ')})`);
    }

    return {
      auth_plain: check,
      auth_login: check,
      async shutdown() {
        for (const s of live) s.destroy();
      },
    };
  },
});
