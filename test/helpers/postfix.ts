/**
 * A private Postfix instance for the end-to-end tests.
 *
 * Everything lives in a fresh directory under os.tmpdir(): config (DIR/etc), queue
 * (DIR/spool), data (DIR/data), maildirs (DIR/mail) and the maillog (DIR/maillog).
 * /etc/postfix and the system instance are never touched; `postfix -c DIR/etc`
 * is how every command is pointed at the private config.
 *
 * Layout of master.cf (see /work/shared/postfix-notes.md and SMTPD_PROXY_README):
 *   127.0.0.1:publicPort  public smtpd, syslog_name postfix/public; with filterPort it
 *                         proxies to 127.0.0.1:filterPort (smtpd_proxy_filter)
 *   127.0.0.1:afterPort   after-filter smtpd, syslog_name postfix/after, with the README's
 *                         overrides plus XFORWARD and XCLIENT for 127.0.0.0/8
 * so log lines read `postfix/public/smtpd[..]` and `postfix/after/smtpd[..]`.
 *
 * Must run as root (`postfix start` requires it). Fails loudly, never skips, when
 * Postfix is missing: a green end-to-end run has to mean Postfix was really there.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export interface PostfixOptions {
  /** Public smtpd (clients connect here). */
  publicPort: number;
  /** smtpd_proxy_filter target (prequeue); if absent, the public smtpd has no proxy filter. */
  filterPort?: number;
  /** After-filter smtpd (prequeue relays here); XFORWARD and XCLIENT allowed from 127.0.0.0/8. */
  afterPort: number;
  /** smtpd_proxy_options=speed_adjust on the public smtpd. */
  speedAdjust?: boolean;
  /** smtpd_proxy_timeout, default 100s. */
  proxyTimeout?: string;
  /** e.g. ['alice@example.test'] -> virtual maildirs under DIR/mail/example.test/alice/. */
  mailboxes: string[];
  /** Recipients the after-filter refuses with 550 (check_recipient_access) though the public smtpd accepts them. */
  afterRejectRecipients?: string[];
  /** A regexp (no slashes needed); header_checks REJECT on mail arriving at the after-filter only. */
  headerChecksReject?: string;
  /** After-filter offers STARTTLS with this cert. Each value is a file path or PEM text. */
  tls?: { cert: string; key: string };
}

export interface PostfixInstance {
  /** The instance directory (removed by stop()). */
  dir: string;
  /** The config directory, for `postfix -c` / `postconf -c`. */
  configDir: string;
  start(): Promise<void>;
  /** Stops master, kills leftovers of this instance, removes dir. Safe to call twice. */
  stop(): Promise<void>;
  /** Paths of delivered messages (new/ and cur/), sorted. */
  maildirFiles(mailbox: string): string[];
  /** Resolves with the maildir files once there are at least `count`; throws with the log tail on timeout. */
  waitForMail(mailbox: string, count: number, timeoutMs?: number): Promise<string[]>;
  /** The maillog text (still available after stop()). */
  log(): string;
  /** Resolves with the first log line matching `re`; throws with the log tail on timeout. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** No message in incoming/active/deferred/hold/maildrop. */
  queueIsEmpty(): boolean;
}

export interface SwaksOptions {
  /** Kill swaks after this long (default 30 s); the result then has code null. */
  timeoutMs?: number;
  /** Written to swaks' stdin (for `--data -`); stdin is otherwise closed. A string goes as UTF-8: 8-bit test data needs a Buffer. */
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
}

export interface SwaksResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Uid/gid of the virtual maildirs (nobody/nogroup on Debian). */
const VMAIL_ID = 65534;
const SBIN_PATH = ['/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/bin', '/bin'];

function toolPath(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN_PATH];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return undefined;
}

function childEnv(extra?: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  // postfix-script calls postconf, postsuper etc. by bare name; CI shells may lack sbin in PATH.
  const p = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN_PATH];
  return { ...process.env, ...extra, PATH: [...new Set(p)].join(':') };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function tail(text: string, lines = 40): string {
  const all = text.trimEnd().split('\n');
  return all.slice(-lines).join('\n');
}

function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, out: out + String(err) });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Ports already handed out: the kernel may offer a just-released port again, and two services can't share one. */
const handedOut = new Set<number>();

/** An unused loopback port (bound and released; good enough between test steps). */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await ephemeralPort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('freePort: the kernel keeps offering ports already handed out');
}

function ephemeralPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('freePort: no port assigned'))));
    });
  });
}

/** Runs swaks with `args`; resolves with its transcript whatever the exit code. */
export function swaks(args: string[], opts: SwaksOptions = {}): Promise<SwaksResult> {
  const bin = toolPath('swaks');
  if (!bin) return Promise.reject(new Error('swaks is not installed (apt-get install swaks)'));
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: childEnv(opts.env),
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (timedOut) stderr += `\n[swaks killed after ${timeoutMs} ms]\n`;
      resolve({ code: timedOut ? null : code, stdout, stderr });
    });
  });
}

/**
 * Connects, waits for the 220 greeting and says QUIT: a clean session in the log
 * ("disconnect from ... quit=1") instead of the "lost connection after CONNECT"
 * a bare TCP probe leaves. Never reaches a proxy filter (that needs an accepted RCPT).
 */
function smtpProbe(port: number, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    let saidQuit = false;
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (!saidQuit && /^220 .*\r\n/m.test(buf)) {
        saidQuit = true;
        buf = '';
        sock.write('QUIT\r\n');
      } else if (saidQuit && /^221[ -]/m.test(buf)) {
        done(true);
      }
    });
  });
}

/** A zombie counts as gone: master is reparented on daemonizing and its reaper may be slow (seen: ~1 s). */
function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Pids of processes belonging to this instance: master exports MAIL_CONFIG=configDir
 * to every daemon (import_environment), and daemons chdir to the queue directory.
 * Matching on those, not on process names, keeps the system instance and other test
 * instances out of reach.
 */
function instancePids(dir: string, configDir: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return pids;
  }
  const needle = `\0MAIL_CONFIG=${configDir}\0`;
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    let mine = false;
    try {
      const cwd = fs.readlinkSync(`/proc/${e}/cwd`);
      mine = cwd === dir || cwd.startsWith(dir + '/');
    } catch {
      /* gone or not ours to read */
    }
    if (!mine) {
      try {
        mine = ('\0' + fs.readFileSync(`/proc/${e}/environ`, 'latin1')).includes(needle);
      } catch {
        /* gone */
      }
    }
    if (mine) pids.push(pid);
  }
  return pids;
}

function killInstanceSync(dir: string, configDir: string, signal: NodeJS.Signals): number[] {
  const pids = instancePids(dir, configDir);
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  }
  return pids;
}

/** Instances not yet stopped: torn down synchronously if the test process exits early. */
const live = new Set<{ dir: string; configDir: string }>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const inst of live) {
      killInstanceSync(inst.dir, inst.configDir, 'SIGKILL');
      if (!process.env.PREQUEUE_KEEP_POSTFIX) fs.rmSync(inst.dir, { recursive: true, force: true });
    }
  });
}

function maildirOf(mailbox: string): string {
  const m = /^([^@\s/]+)@([^@\s/]+)$/.exec(mailbox);
  if (!m) throw new Error(`mailbox must be local@domain, got "${mailbox}"`);
  return `${m[2]}/${m[1]}/`;
}

/** regexp: tables delimit patterns with "/"; a bare slash in the pattern would end it early. */
function regexpTablePattern(re: string): string {
  return re.replace(/(\\.)|\//g, (m, esc: string | undefined) => esc ?? '\\/');
}

function pemOrFile(value: string): string {
  return value.includes('-----BEGIN') ? value : fs.readFileSync(value, 'utf8');
}

const MASTER_INTERNAL = `
# Internal services: stock Debian list with chroot "n" (no chroot to populate),
# minus pickup/local/pipe (no sendmail, no local delivery in this instance).
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
# maillog_file needs postlogd; postfix start refuses without it.
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export function createPostfix(opts: PostfixOptions): PostfixInstance {
  for (const [name, port] of [
    ['publicPort', opts.publicPort],
    ['afterPort', opts.afterPort],
    ['filterPort', opts.filterPort],
  ] as const) {
    if (port === undefined && name === 'filterPort') continue;
    if (!Number.isInteger(port) || port! < 1 || port! > 65535) throw new Error(`createPostfix: bad ${name} ${port}`);
  }
  const ports = [opts.publicPort, opts.afterPort, opts.filterPort].filter((p) => p !== undefined);
  if (new Set(ports).size !== ports.length) throw new Error(`createPostfix: ports must differ: ${ports.join(', ')}`);
  const mailboxes = opts.mailboxes.map((m) => ({ address: m.toLowerCase(), dir: maildirOf(m.toLowerCase()) }));
  const domains = [...new Set(mailboxes.map((m) => m.address.split('@')[1]!))];
  if (!domains.length) throw new Error('createPostfix: at least one mailbox is needed');

  // Created eagerly so `dir` is known before start(); mkdtemp is private (0700), start() widens it.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prequeue-postfix-'));
  // master.cf -o values are whitespace-separated tokens: a space in a path would split them.
  if (/\s/.test(dir)) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`createPostfix: tmpdir path contains whitespace, Postfix -o options cannot carry it: ${dir}`);
  }
  const configDir = path.join(dir, 'etc');
  const spool = path.join(dir, 'spool');
  const dataDir = path.join(dir, 'data');
  const mailBase = path.join(dir, 'mail');
  const maillog = path.join(dir, 'maillog');
  const handle = { dir, configDir };
  live.add(handle);
  installExitHook();
  let started = false;
  let stopped = false;
  let lastLog = '';

  const readLog = (): string => {
    if (stopped) return lastLog;
    try {
      return fs.readFileSync(maillog, 'utf8');
    } catch {
      return lastLog;
    }
  };

  const postfixBin = (): string => {
    const bin = toolPath('postfix');
    if (!bin) throw new Error('Postfix is not installed: no `postfix` in PATH or /usr/sbin (apt-get install postfix)');
    return bin;
  };

  function writeConfig(): void {
    fs.mkdirSync(configDir, { recursive: true });
    fs.mkdirSync(spool, { recursive: true });
    fs.mkdirSync(dataDir, { recursive: true });
    fs.mkdirSync(mailBase, { recursive: true });

    const mainCf = `# Private test instance written by test/helpers/postfix.ts
compatibility_level = 3.6
queue_directory = ${spool}
data_directory = ${dataDir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# No DNS anywhere: tests must not depend on the resolver.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
relayhost =
relay_domains =
default_transport = error:outbound mail disabled in test instance
local_transport = error:local delivery disabled in test instance
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = ${maillog}
maillog_file_prefixes = /var, /dev/stdout, ${dir}
virtual_mailbox_domains = ${domains.join(', ')}
virtual_mailbox_base = ${mailBase}
virtual_mailbox_maps = texthash:${configDir}/vmailbox
virtual_uid_maps = static:${VMAIL_ID}
virtual_gid_maps = static:${VMAIL_ID}
smtpd_proxy_timeout = ${opts.proxyTimeout ?? '100s'}
smtpd_banner = $myhostname ESMTP test instance
`;

    const pub = [
      `127.0.0.1:${opts.publicPort} inet n - n - 20 smtpd`,
      `  -o syslog_name=postfix/public`,
      ...(opts.filterPort !== undefined
        ? [`  -o smtpd_proxy_filter=127.0.0.1:${opts.filterPort}`, `  -o smtpd_client_connection_count_limit=10`]
        : []),
      `  -o smtpd_proxy_options=${opts.speedAdjust ? 'speed_adjust' : ''}`,
      // Every test client is in mynetworks; without this the public smtpd would be an open relay.
      `  -o smtpd_relay_restrictions=reject_unauth_destination`,
    ];
    const after = [
      `127.0.0.1:${opts.afterPort} inet n - n - - smtpd`,
      `  -o syslog_name=postfix/after`,
      `  -o smtpd_proxy_filter=`,
      `  -o smtpd_authorized_xforward_hosts=127.0.0.0/8`,
      `  -o smtpd_authorized_xclient_hosts=127.0.0.0/8`,
      `  -o smtpd_client_restrictions=`,
      `  -o smtpd_helo_restrictions=`,
      `  -o smtpd_sender_restrictions=`,
      `  -o smtpd_relay_restrictions=`,
      `  -o smtpd_recipient_restrictions=check_recipient_access,texthash:${configDir}/after_rcpt_access,permit_mynetworks,reject`,
      `  -o smtpd_data_restrictions=`,
      `  -o mynetworks=127.0.0.0/8`,
      `  -o receive_override_options=no_unknown_recipient_checks`,
      // A cleanup of its own, so header_checks act on mail through the proxy only.
      `  -o cleanup_service_name=cleanup_after`,
      ...(opts.tls
        ? [
            `  -o smtpd_tls_security_level=may`,
            `  -o smtpd_tls_cert_file=${configDir}/after.crt`,
            `  -o smtpd_tls_key_file=${configDir}/after.key`,
          ]
        : []),
    ];
    const cleanupAfter = [
      `cleanup_after unix n - n - 0 cleanup`,
      ...(opts.headerChecksReject !== undefined ? [`  -o header_checks=regexp:${configDir}/header_checks`] : []),
    ];
    const masterCf = `# Private test instance written by test/helpers/postfix.ts\n${pub.join('\n')}\n${after.join('\n')}\n${cleanupAfter.join('\n')}\n${MASTER_INTERNAL}`;

    const vmailbox = mailboxes.map((m) => `${m.address} ${m.dir}`).join('\n') + '\n';
    const rcptAccess =
      (opts.afterRejectRecipients ?? []).map((r) => `${r.toLowerCase()} 550 5.1.1 refused by after-filter (test)`).join('\n') + '\n';

    const files: [string, string, number][] = [
      ['main.cf', mainCf, 0o644],
      ['master.cf', masterCf, 0o644],
      ['vmailbox', vmailbox, 0o644],
      ['after_rcpt_access', rcptAccess, 0o644],
    ];
    if (opts.headerChecksReject !== undefined) {
      files.push(['header_checks', `/${regexpTablePattern(opts.headerChecksReject)}/ REJECT header rejected by test instance\n`, 0o644]);
    }
    if (opts.tls) {
      files.push(['after.crt', pemOrFile(opts.tls.cert), 0o644]);
      files.push(['after.key', pemOrFile(opts.tls.key), 0o600]);
    }
    for (const [name, text, mode] of files) {
      const p = path.join(configDir, name);
      fs.writeFileSync(p, text, { mode });
      fs.chmodSync(p, mode);
      fs.chownSync(p, 0, 0);
    }

    // postfix start's ownership checks: config and queue dirs root-owned and not
    // group/other-writable, data_directory owned by mail_owner; daemons running as
    // postfix or the vmail uid must be able to traverse dir.
    const [postfixUid, postfixGid] = (['-u', '-g'] as const).map((flag) => {
      const r = spawnSync('id', [flag, 'postfix'], { encoding: 'utf8' });
      const id = r.stdout?.trim() ?? '';
      if (r.status !== 0 || !/^\d+$/.test(id)) {
        throw new Error('Postfix is not installed properly: no `postfix` user (apt-get install postfix)');
      }
      return Number(id);
    }) as [number, number];
    for (const d of [dir, configDir, spool]) {
      fs.chownSync(d, 0, 0);
      fs.chmodSync(d, 0o755);
    }
    fs.chownSync(dataDir, postfixUid, postfixGid);
    fs.chmodSync(dataDir, 0o700);
    fs.chownSync(mailBase, VMAIL_ID, VMAIL_ID);
    fs.chmodSync(mailBase, 0o755);
  }

  async function start(): Promise<void> {
    if (stopped) throw new Error('createPostfix: this instance was stopped; create a new one');
    if (started) throw new Error('createPostfix: already started');
    if (typeof process.getuid === 'function' && process.getuid() !== 0) {
      throw new Error('the Postfix test instance must run as root (postfix start needs it)');
    }
    let bin: string;
    try {
      bin = postfixBin();
      writeConfig();
    } catch (err) {
      await stop();
      throw err;
    }
    started = true;

    const fail = async (why: string): Promise<never> => {
      const logText = readLog();
      await stop().catch(() => undefined);
      throw new Error(`Postfix test instance did not start: ${why}\n--- maillog tail (${maillog}) ---\n${tail(logText) || '(empty)'}`);
    };

    const res = await run(bin, ['-c', configDir, 'start']);
    if (res.code !== 0) return fail(`postfix -c ${configDir} start exited ${res.code}:\n${res.out.trim()}`);

    const deadline = Date.now() + 15_000;
    let statusOk = false;
    const ready = new Set<number>();
    while (Date.now() < deadline) {
      if (!statusOk) statusOk = (await run(bin, ['-c', configDir, 'status'], 5000)).code === 0;
      for (const port of [opts.publicPort, opts.afterPort]) {
        if (!ready.has(port) && (await smtpProbe(port))) ready.add(port);
      }
      if (statusOk && ready.size === 2) return;
      if (/\b(fatal|panic):/.test(readLog())) break;
      await sleep(100);
    }
    const missing = [opts.publicPort, opts.afterPort].filter((p) => !ready.has(p));
    return fail(
      `${statusOk ? '' : '`postfix status` does not report it running; '}` +
        (missing.length ? `no SMTP greeting on 127.0.0.1:${missing.join(', 127.0.0.1:')}` : 'fatal error in the maillog'),
    );
  }

  async function stop(): Promise<void> {
    if (stopped) return;
    stopped = true;
    if (started) {
      // SIGTERM to master is what `postfix stop` does, but postfix-script then polls
      // once a second; polling here saves about a second per instance.
      let masterPid: number | undefined;
      try {
        masterPid = Number(fs.readFileSync(path.join(spool, 'pid', 'master.pid'), 'utf8').trim()) || undefined;
      } catch {
        /* never started */
      }
      if (masterPid && instancePids(dir, configDir).includes(masterPid)) {
        try {
          process.kill(masterPid, 'SIGTERM');
        } catch {
          /* gone */
        }
        for (let i = 0; i < 100 && pidAlive(masterPid); i++) await sleep(50);
      }
      // Daemons serving a session outlive master until their client leaves; a
      // leftover smtpd would keep a test's port busy for the next instance.
      if (killInstanceSync(dir, configDir, 'SIGTERM').length) {
        for (let i = 0; i < 40 && instancePids(dir, configDir).length; i++) await sleep(50);
        killInstanceSync(dir, configDir, 'SIGKILL');
        for (let i = 0; i < 40 && instancePids(dir, configDir).length; i++) await sleep(50);
      }
    }
    try {
      lastLog = fs.readFileSync(maillog, 'utf8');
    } catch {
      /* no log written */
    }
    live.delete(handle);
    if (process.env.PREQUEUE_KEEP_POSTFIX) return;
    fs.rmSync(dir, { recursive: true, force: true });
  }

  function maildirFiles(mailbox: string): string[] {
    const base = path.join(mailBase, maildirOf(mailbox.toLowerCase()));
    const files: string[] = [];
    for (const sub of ['new', 'cur']) {
      let names: string[];
      try {
        names = fs.readdirSync(path.join(base, sub));
      } catch {
        continue;
      }
      for (const n of names) if (!n.startsWith('.')) files.push(path.join(base, sub, n));
    }
    return files.sort();
  }

  async function waitForMail(mailbox: string, count: number, timeoutMs = 10_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const files = maildirFiles(mailbox);
      if (files.length >= count) return files;
      if (Date.now() >= deadline) {
        throw new Error(`waitForMail(${mailbox}, ${count}): only ${files.length} after ${timeoutMs} ms\n--- maillog tail ---\n${tail(readLog())}`);
      }
      await sleep(50);
    }
  }

  async function waitForLog(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const lineRe = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = readLog();
      const m = lineRe.exec(text);
      if (m) {
        const start = text.lastIndexOf('\n', m.index) + 1;
        const end = text.indexOf('\n', m.index + m[0].length);
        return text.slice(start, end < 0 ? undefined : end);
      }
      if (Date.now() >= deadline) throw new Error(`waitForLog(${re}): not seen after ${timeoutMs} ms\n--- maillog tail ---\n${tail(readLog())}`);
      await sleep(50);
    }
  }

  function queueIsEmpty(): boolean {
    const walk = (d: string): boolean => {
      let entries: fs.Dirent[];
      try {
        entries = fs.readdirSync(d, { withFileTypes: true });
      } catch {
        return true;
      }
      return entries.every((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : false));
    };
    return ['incoming', 'active', 'deferred', 'hold', 'maildrop'].every((q) => walk(path.join(spool, q)));
  }

  return { dir, configDir, start, stop, maildirFiles, waitForMail, log: readLog, waitForLog, queueIsEmpty };
}
