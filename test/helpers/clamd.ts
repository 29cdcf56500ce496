/**
 * A private ClamAV clamd (Debian's clamav-daemon package) for tests. clamd
 * cannot download signatures here, so the test setup writes its own database:
 * an MD5 hash signature (.hdb) of the EICAR test file. clamd decodes MIME, so
 * the signature also matches EICAR sent as a base64 attachment. clamd reports
 * signatures from unofficial databases with a ".UNOFFICIAL" suffix
 * ("Eicar-Signature.UNOFFICIAL").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clamdCommand } from '../../src/scan/clamd';
import { freePort } from './postfix';

export const CLAMD = '/usr/sbin/clamd';

/** The EICAR anti-virus test file (68 bytes). */
export const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';
export const EICAR_SIGNATURE = 'Eicar-Signature';

export interface Clamd {
  /** `127.0.0.1:PORT` (TCPSocket) */
  server: string;
  port: number;
  /** Its LocalSocket. */
  socket: string;
  dir: string;
  output(): string;
  stop(): Promise<void>;
}

export interface ClamdOptions {
  /** clamd's StreamMaxLength (default "1M", small so tests can exceed it cheaply). */
  streamMaxLength?: string;
}

export function requireClamd(): void {
  if (!existsSync(CLAMD)) throw new Error(`${CLAMD} not found: install Debian's clamav-daemon package (.ci/run does)`);
}

export async function startClamd(opts: ClamdOptions = {}): Promise<Clamd> {
  requireClamd();
  const dir = mkdtempSync(join(tmpdir(), 'pq-clamd-'));
  const db = join(dir, 'db');
  mkdirSync(db);
  const md5 = createHash('md5').update(EICAR, 'latin1').digest('hex');
  writeFileSync(join(db, 'test.hdb'), `${md5}:${Buffer.byteLength(EICAR, 'latin1')}:${EICAR_SIGNATURE}\n`);
  const port = await freePort();
  const socket = join(dir, 'clamd.sock');
  const log = join(dir, 'clamd.log');
  const conf = [
    'Foreground yes',
    `DatabaseDirectory ${db}`,
    `TCPSocket ${port}`,
    'TCPAddr 127.0.0.1',
    `LocalSocket ${socket}`,
    `PidFile ${join(dir, 'clamd.pid')}`,
    `LogFile ${log}`,
    `StreamMaxLength ${opts.streamMaxLength ?? '1M'}`,
    'MaxThreads 2',
    'SelfCheck 3600',
    '',
  ];
  writeFileSync(join(dir, 'clamd.conf'), conf.join('\n'));
  const child: ChildProcess = spawn(CLAMD, ['--config-file', join(dir, 'clamd.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const all = (): string => output + (existsSync(log) ? readFileSync(log, 'utf8') : '');

  const target = { kind: 'tcp' as const, host: '127.0.0.1', port };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = all();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`clamd exited (${child.exitCode ?? child.signalCode}) before answering PING:\n${text}`);
    }
    try {
      if ((await clamdCommand(target, 'PING', 1000)) === 'PONG') break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      const text = all();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`clamd did not answer PING on port ${port} within 30 s:\n${text}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    server: `127.0.0.1:${port}`,
    port,
    socket,
    dir,
    output: all,
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

/** A MIME message with `content` as a base64 attachment. */
export function messageWithAttachment(content: string | Buffer, filename = 'eicar.com', extraBody = ''): string {
  const bytes = Buffer.isBuffer(content) ? content : Buffer.from(content, 'latin1');
  const b64 = bytes.toString('base64').replace(/.{1,76}/g, '$&\r\n');
  return [
    'From: Sender <sender@example.net>',
    'To: alice@example.test',
    'Subject: see attachment',
    `Date: ${new Date().toUTCString()}`,
    'Message-ID: <attach@example.net>',
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="BOUNDARY"',
    '',
    '--BOUNDARY',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'Please find the file attached.',
    extraBody,
    '--BOUNDARY',
    `Content-Type: application/octet-stream; name="${filename}"`,
    'Content-Transfer-Encoding: base64',
    `Content-Disposition: attachment; filename="${filename}"`,
    '',
    b64.trimEnd(),
    '--BOUNDARY--',
    '',
  ].join('\r\n');
}
