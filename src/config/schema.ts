import { z } from 'zod';
import { parseCidr } from '../util/cidr';
import { parseServer } from '../dns/resolver';

/** `host:port`, `[v6]:port` or a bare port. Kept as a string in the file, parsed here once. */
export const hostPort = (defaultHost: string, allowZero = false) =>
  z.union([z.string(), z.number()]).transform((raw, ctx) => {
    const s = String(raw).trim();
    let host = defaultHost;
    let port: string;
    const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(s);
    if (v6) {
      host = v6[1]!;
      port = v6[2]!;
    } else if (/^\d+$/.test(s)) {
      port = s;
    } else {
      const i = s.lastIndexOf(':');
      if (i <= 0) {
        ctx.addIssue({ code: 'custom', message: `expected HOST:PORT, got "${s}"` });
        return z.NEVER;
      }
      host = s.slice(0, i);
      port = s.slice(i + 1);
    }
    const n = Number(port);
    if (!Number.isInteger(n) || n < (allowZero ? 0 : 1) || n > 65535) {
      ctx.addIssue({ code: 'custom', message: `port must be 1-65535, got "${port}"` });
      return z.NEVER;
    }
    return { host, port: n };
  });

const seconds = (def: number, max = 3600) => z.number().positive().max(max).default(def);

const cidrList = z.array(z.string()).superRefine((list, ctx) => {
  list.forEach((entry, i) => {
    if (!parseCidr(entry)) ctx.addIssue({ code: 'custom', path: [i], message: `not an IP address or CIDR network: "${entry}"` });
  });
});

/**
 * Postfix's smtpd_proxy_timeout (100 s) bounds every read and write between
 * Postfix and prequeue. A downstream stage that takes longer than that makes
 * Postfix give up while the downstream may still queue the message: a
 * duplicate. So no downstream stage may be configured at 100 s or more.
 */
const POSTFIX_PROXY_TIMEOUT = 100;
const downstreamSeconds = (def: number) =>
  z
    .number()
    .positive()
    .max(POSTFIX_PROXY_TIMEOUT - 10, `must stay well under Postfix's smtpd_proxy_timeout (${POSTFIX_PROXY_TIMEOUT} s)`)
    .default(def);

export const downstreamSchema = z
  .object({
    address: hostPort('127.0.0.1').default({ host: '127.0.0.1', port: 10026 }),
    /** EHLO name toward the downstream; defaults to `hostname`. */
    ehlo_name: z.string().min(1).optional(),
    /** STARTTLS toward the downstream: off, when offered, or required (fail with 4xx if not offered). */
    starttls: z.enum(['off', 'opportunistic', 'required']).default('off'),
    tls: z
      .object({
        ca: z.string().optional(),
        servername: z.string().optional(),
        reject_unauthorized: z.boolean().default(true),
      })
      .strict()
      .default({ reject_unauthorized: true }),
    /** Send XFORWARD with the real client when the downstream advertises it. */
    xforward: z.boolean().default(true),
    /** Standalone mode: send XCLIENT (Postfix) so the downstream applies its own client checks to the real client. */
    xclient: z.boolean().default(false),
    /**
     * Idle links kept for the next transaction (connect, greeting and EHLO are
     * then skipped). Each holds a downstream smtpd process; 0 turns it off.
     */
    pool: z
      .object({
        /*
         * Links are only made when none is idle, so busy + idle never exceeds the
         * peak number of concurrent transactions: this cap only trims after a
         * burst. Below the concurrency in use, links churn (connect, EHLO, QUIT):
         * at 50 sessions 16 cost about a fifth more CPU per message than 64.
         */
        max_idle: z.number().int().min(0).max(1000).default(64),
        idle_timeout: z.number().positive().max(240).default(10),
      })
      .strict()
      .default({ max_idle: 64, idle_timeout: 10 }),
    timeouts: z
      .object({
        connect: downstreamSeconds(10),
        greeting: downstreamSeconds(30),
        command: downstreamSeconds(30),
        data: downstreamSeconds(30),
        eod: downstreamSeconds(60),
      })
      .strict()
      .default({ connect: 10, greeting: 30, command: 30, data: 30, eod: 60 }),
  })
  .strict();

const redisStoreSchema = z
  .object({
    /** redis://[user:password@]host[:port][/db] or rediss:// for TLS; replaces host, port and db. */
    url: z
      .string()
      .regex(/^rediss?:\/\//, 'expected redis://... or rediss://...')
      .optional(),
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(1).max(65535).default(6379),
    db: z.number().int().min(0).default(0),
    username: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    /** Prepended to every key, so other applications can share the database. */
    prefix: z.string().default('prequeue:'),
    /** Seconds to establish the connection. */
    connect_timeout: z.number().positive().max(30).default(2),
    /** Seconds a command may take; past it the operation fails and the plugin's failure policy applies. */
    command_timeout: z.number().positive().max(30).default(1),
  })
  .strict();

export const storeSchema = z
  .object({
    backend: z.enum(['sqlite', 'redis']).default('sqlite'),
    /**
     * SQLite file, relative to the config dir. Default: $STATE_DIRECTORY/prequeue.db
     * (systemd StateDirectory=), else /var/lib/prequeue/prequeue.db if that directory
     * is writable, else a private directory under the spool (temp) directory.
     */
    path: z.string().min(1).optional(),
    /** Seconds a SQLite write waits for another process's lock. */
    busy_timeout: z.number().positive().max(30).default(2),
    redis: redisStoreSchema.default(redisStoreSchema.parse({})),
  })
  .strict();

export const authSchema = z
  .object({
    /** AUTH only after STARTTLS (never), or also in the clear from loopback clients, or from anyone (tests only). */
    allow_insecure: z.enum(['never', 'loopback', 'always']).default('never'),
    /** Mechanisms offered, in this order, among those the auth plugins support. */
    mechanisms: z.array(z.enum(['PLAIN', 'LOGIN', 'CRAM-MD5'])).min(1).default(['PLAIN', 'LOGIN', 'CRAM-MD5']),
    /** MAIL needs AUTH first (530 5.7.0), except from relay_clients: for a submission port. */
    required: z.boolean().default(false),
    brute_force: z
      .object({
        /** Failed AUTH attempts per client address (IPv6: per /64) within `window` after which it is cut off; 0: never. */
        max_failures: z.number().int().min(0).default(5),
        /** Seconds a failure counts. */
        window: z.number().positive().max(86400).default(900),
        /** Seconds before answering a failure, doubled for each further failure up to max_delay. */
        delay: z.number().min(0).max(60).default(1),
        max_delay: z.number().min(0).max(60).default(16),
        /** Clients never blocked or delayed (a webmail front end on localhost). */
        exempt: cidrList.default([]),
      })
      .strict()
      .default({ max_failures: 5, window: 900, delay: 1, max_delay: 16, exempt: [] }),
    /** Standalone with downstream.xclient: also tell the downstream the login (XCLIENT LOGIN=user). */
    xclient_login: z.boolean().default(true),
    /** In our Received header: "(Authenticated sender: user)" and ESMTPSA/ESMTPA (Postfix's smtpd_sasl_authenticated_header). */
    received_header: z.boolean().default(true),
  })
  .strict();

export const configSchema = z
  .object({
    /** postfix: behind smtpd_proxy_filter (client from XFORWARD); standalone: prequeue faces the clients itself. */
    mode: z.enum(['postfix', 'standalone']).default('postfix'),
    /** Port 0 picks a free port (tests). */
    listen: hostPort('127.0.0.1', true).default({ host: '127.0.0.1', port: 10025 }),
    /** Our name in the greeting, EHLO replies and Received headers. Defaults to the machine's hostname. */
    hostname: z.string().min(1).optional(),
    /** Greeting text after the hostname. */
    banner: z.string().default('prequeue'),
    downstream: downstreamSchema.default(downstreamSchema.parse({})),
    /** Peers allowed to use XFORWARD and XCLIENT. Anyone else is refused and nothing they claim is used. */
    trusted_proxies: cidrList.default(['127.0.0.1', '::1']),
    /** Clients allowed to relay; immune to immune-able checks. */
    relay_clients: cidrList.default([]),
    /** Envelope senders immune to immune-able checks: `user@domain`, `@domain`. */
    immune_senders: z.array(z.string().min(1)).default([]),
    /** Inbound STARTTLS; offered only when both are set. Both files are read again on SIGHUP (certificate renewal). */
    tls: z
      .object({ key: z.string(), cert: z.string() })
      .strict()
      .optional(),
    /** SMTP AUTH (standalone mode), offered when an auth plugin is configured. */
    auth: authSchema.default(authSchema.parse({})),
    limits: z
      .object({
        message_size: z.number().int().positive().default(26214400),
        recipients: z.number().int().positive().default(1000),
        connections: z.number().int().positive().default(500),
        /** Standalone mode: connections per client address (behind Postfix every connection comes from Postfix). */
        connections_per_client: z.number().int().positive().default(20),
        command_line_length: z.number().int().min(512).max(65536).default(2048),
        /** Longest message line (without CRLF); 0 accepts any, as Postfix does. */
        data_line_length: z.number().int().min(0).default(0),
        /** Seconds a client may stay silent when it owes us a command or data. */
        idle_timeout: seconds(300),
      })
      .strict()
      .default({
        message_size: 26214400,
        recipients: 1000,
        connections: 500,
        connections_per_client: 20,
        command_line_length: 2048,
        data_line_length: 0,
        idle_timeout: 300,
      }),
    data: z
      .object({
        /**
         * Bare CR or LF in the message is how SMTP smuggling works. reject (default):
         * 550 and nothing relayed. normalize: turned into CRLF, so a lone "." line
         * that results is dot-stuffed on the way out and can never end the message.
         */
        bare_newline: z.enum(['reject', 'normalize']).default('reject'),
        nul: z.enum(['reject', 'keep']).default('reject'),
      })
      .strict()
      .default({ bare_newline: 'reject', nul: 'reject' }),
    spool: z
      .object({
        dir: z.string().optional(),
        memory_threshold: z.number().int().min(0).default(1048576),
        /** Bytes all messages being received or relayed may hold in memory together; past it a message goes to a temp file even under memory_threshold. */
        memory_budget: z.number().int().min(0).default(8388608),
        /**
         * When no plugin needs the whole message first (no data_headers_end,
         * data_post or queue plugin, no Received header of ours to add), send
         * it downstream as it arrives and hold back only the final dot.
         */
        cut_through: z.boolean().default(true),
      })
      .strict()
      .default({ memory_threshold: 1048576, memory_budget: 8388608, cut_through: true }),
    /** Add our own Received header: auto = only in standalone mode (Postfix already adds one). */
    received_header: z.enum(['auto', 'always', 'never']).default('auto'),
    deferred_rejection: z
      .object({
        /** Standalone mode: hold connect/helo rejections until `stage` (always done in Postfix mode). */
        connection: z.boolean().default(false),
        /** Where deferred rejections are delivered. */
        stage: z.enum(['mail', 'rcpt']).default('mail'),
      })
      .strict()
      .default({ connection: false, stage: 'mail' }),
    /** The resolver every DNS-based plugin shares. */
    dns: z
      .object({
        /** IP, IP:port or [IPv6]:port; empty: the nameservers of /etc/resolv.conf. */
        servers: z
          .array(z.string())
          .default([])
          .superRefine((list, ctx) => {
            list.forEach((entry, i) => {
              try {
                parseServer(entry);
              } catch (err) {
                ctx.addIssue({ code: 'custom', path: [i], message: (err as Error).message });
              }
            });
          }),
        /** Seconds to wait for one server's reply. */
        timeout: z.number().positive().max(30).default(3),
        /** Rounds over the server list. */
        tries: z.number().int().min(1).max(5).default(2),
        /** Answers kept in the cache (0: no cache). */
        cache_size: z.number().int().min(0).default(10000),
        /** Bounds on how long answers are cached, in seconds. */
        min_ttl: z.number().int().min(0).default(0),
        max_ttl: z.number().int().min(0).default(86400),
      })
      .strict()
      .default({ servers: [], timeout: 3, tries: 2, cache_size: 10000, min_ttl: 0, max_ttl: 86400 }),
    /** The persistent key-value store plugins share (greylisting, karma, bayes); opened at first use. */
    store: storeSchema.default(storeSchema.parse({})),
    /** Default seconds a plugin hook may take. */
    plugin_timeout: z.number().positive().max(300).default(30),
    /**
     * The longest any reply to the client may take (MAIL with the downstream
     * connection set up, RCPT, and from the final dot to our answer). Past it the
     * client gets 451 and the downstream transaction is dropped. Postfix waits
     * at most smtpd_proxy_timeout (100 s) and then may deliver twice.
     */
    reply_deadline: z.number().positive().max(POSTFIX_PROXY_TIMEOUT - 5).default(85),
    /** Seconds the data_post and queue plugins of one message get together (part of reply_deadline). */
    data_post_budget: z.number().positive().max(80).default(30),
    /** Seconds SIGTERM waits for transactions in flight. */
    shutdown_timeout: seconds(30),
    memory: z
      .object({
        /**
         * MiB of each of V8's two young-generation semi-spaces, as node's
         * --max-semi-space-size but set from inside (see src/heap.ts); 0 leaves
         * V8's own sizing (up to 16). Smaller keeps RSS down; 4 was as fast as 16
         * in the bench.
         */
        semi_space_mb: z.number().int().min(0).max(64).default(4),
        /**
         * How far (in %) V8's old generation may grow past what the last full
         * collection left live before the next full one (V8's
         * --heap-growing-percent, set from inside); 0 leaves V8's own factor,
         * which is up to 300% for a heap this small.
         */
        old_space_growth_percent: z.number().int().min(0).max(400).default(50),
      })
      .strict()
      .default({ semi_space_mb: 4, old_space_growth_percent: 50 }),
    /** Worker processes sharing the listen socket: a number, or "auto" for one per CPU core. */
    workers: z.union([z.number().int().min(1).max(64), z.literal('auto')]).default(1),
    log: z
      .object({
        level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
        format: z.enum(['text', 'json']).default('text'),
        file: z.string().optional(),
      })
      .strict()
      .default({ level: 'info', format: 'text' }),
    /** Extra directories searched for plugins before the built-in ones. */
    plugin_dirs: z.array(z.string()).default([]),
    plugins: z.array(z.unknown()).default([]),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.data_post_budget >= c.reply_deadline) {
      ctx.addIssue({
        code: 'custom',
        path: ['data_post_budget'],
        message: `data_post_budget (${c.data_post_budget}) must leave time within reply_deadline (${c.reply_deadline}) for the downstream`,
      });
    }
    for (const s of c.immune_senders) {
      if (!/^[^@\s]*@[^@\s]+$/.test(s) && !/^[^@\s]+\.[^@\s]+$/.test(s)) {
        ctx.addIssue({ code: 'custom', path: ['immune_senders'], message: `expected user@domain or @domain, got "${s}"` });
      }
    }
  });

export type Config = z.infer<typeof configSchema>;
export type DownstreamConfig = Config['downstream'];
