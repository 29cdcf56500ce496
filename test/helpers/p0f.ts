/**
 * A private p0f v3 daemon for tests: captures on the loopback interface and
 * answers API queries on a socket in a temp directory. Needs the p0f binary
 * (Debian package p0f) and the right to capture packets (root or CAP_NET_RAW);
 * without either, startP0f() throws with the reason, so the test fails.
 *
 *   const p0f = await startP0f();
 *   ... open a TCP connection over 127.0.0.1, query p0f.socket ...
 *   await p0f.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const P0F_BIN = process.env.P0F_BIN ?? '/usr/sbin/p0f';
export const P0F_FP = process.env.P0F_FP ?? '/etc/p0f/p0f.fp';

export interface P0fInstance {
  socket: string;
  pid: number;
  /** What p0f printed (the last 64 KiB). */
  output(): string;
  stop(): Promise<void>;
}

const canConnect = (path: string): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

export async function startP0f(iface = 'lo'): Promise<P0fInstance> {
  if (!existsSync(P0F_BIN)) throw new Error(`p0f is not installed (${P0F_BIN} missing): apt-get install p0f`);
  if (!existsSync(P0F_FP)) throw new Error(`p0f's fingerprint database ${P0F_FP} is missing (Debian package p0f)`);
  const dir = mkdtempSync(join(tmpdir(), 'pq-p0f-'));
  const socket = join(dir, 'p0f.sock');
  // In the foreground, so the test owns the process and can stop it by its pid.
  const child = spawn(P0F_BIN, ['-i', iface, '-s', socket, '-f', P0F_FP, 'tcp'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  // p0f prints every observation: read it all, or a full pipe would stall it.
  const keep = (d: Buffer) => {
    out = (out + d.toString('latin1')).slice(-65536);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exited(child);
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 5000;
  for (;;) {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(
        `p0f did not start (${spawnError?.message ?? `exit ${child.exitCode ?? child.signalCode}`}); capturing on ${iface} ` +
          `needs root or CAP_NET_RAW. p0f said:\n${out}`,
      );
    }
    if (existsSync(socket) && (await canConnect(socket))) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`p0f did not open its API socket within 5 s. Its output:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { socket, pid: child.pid!, output: () => out, stop };
}
