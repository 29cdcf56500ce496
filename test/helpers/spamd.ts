/**
 * A private SpamAssassin spamd (Debian's spamd package) for tests: its own
 * site config in a temp dir (the .pre files from /etc/spamassassin, no Bayes,
 * no auto-whitelist), the stock rules from /usr/share/spamassassin, local tests
 * only (--local: no DNS), one child, a TCP port on 127.0.0.1 and a UNIX socket.
 * Start it once per test file: it takes a second or so to compile its rules.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spamdPing } from '../../src/scan/spamd';
import { freePort } from './postfix';

export const SPAMD = '/usr/sbin/spamd';
const SITE_PRE_DIR = '/etc/spamassassin';
const RULES_DIR = '/usr/share/spamassassin';

/** The GTUBE test string: SpamAssassin scores it 1000. */
export const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

export interface Spamd {
  /** `127.0.0.1:PORT` */
  server: string;
  port: number;
  /** The UNIX socket it also listens on. */
  socket: string;
  dir: string;
  /** What spamd wrote so far (its log goes to stderr). */
  output(): string;
  stop(): Promise<void>;
}

/** Throws (fails the test) when spamd is missing: a missing service never passes silently. */
export function requireSpamd(): void {
  if (!existsSync(SPAMD)) throw new Error(`${SPAMD} not found: install Debian's spamd and spamassassin packages (.ci/run does)`);
  if (!existsSync(join(RULES_DIR, '50_scores.cf'))) throw new Error(`${RULES_DIR} has no rules: install Debian's spamassassin package`);
}

export async function startSpamd(extraConfig = ''): Promise<Spamd> {
  requireSpamd();
  const dir = mkdtempSync(join(tmpdir(), 'pq-spamd-'));
  // spamd drops to "nobody" when started as root: it must be able to read its config.
  chmodSync(dir, 0o755);
  const siteDir = join(dir, 'siteconfig');
  mkdirSync(siteDir, { mode: 0o755 });
  for (const f of readdirSync(SITE_PRE_DIR)) if (f.endsWith('.pre')) copyFileSync(join(SITE_PRE_DIR, f), join(siteDir, f));
  writeFileSync(
    join(siteDir, 'local.cf'),
    ['use_bayes 0', 'bayes_auto_learn 0', 'use_auto_whitelist 0', 'report_safe 0', extraConfig, ''].join('\n'),
  );
  const port = await freePort();
  const socket = join(dir, 'spamd.sock');
  const args = [
    '--listen', `127.0.0.1:${port}`,
    '--listen', socket,
    '--pidfile', join(dir, 'spamd.pid'),
    '--syslog', 'stderr',
    '--max-children', '1',
    '--local',
    '--nouser-config',
    '--configpath', RULES_DIR,
    '--siteconfigpath', siteDir,
    '--helper-home-dir', dir,
  ];
  if (process.getuid?.() === 0) args.push('--username', 'nobody');
  const child: ChildProcess = spawn(SPAMD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const target = { kind: 'tcp' as const, host: '127.0.0.1', port };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`spamd exited (${child.exitCode ?? child.signalCode}) before answering PING:\n${output}`);
    }
    try {
      await spamdPing(target, 1000);
      break;
    } catch {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`spamd did not answer PING on port ${port} within 30 s:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    server: `127.0.0.1:${port}`,
    port,
    socket,
    dir,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
