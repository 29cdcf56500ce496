/**
 * A real authoritative DNS server (NSD, from Debian's nsd package) on a
 * loopback port, serving zones a test file writes. Each test file starts its
 * own, so zones stay next to the tests that read them.
 *
 * NSD was picked because it is authoritative-only, starts in well under a
 * second and needs no root-owned state: everything lives in a temp dir.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSocket } from 'node:dgram';
import * as packet from 'dns-packet';
import { freePort } from './postfix';

export const NSD = '/usr/sbin/nsd';

export interface DnsServer {
  /** `127.0.0.1:PORT`, for the resolver's `servers`. */
  server: string;
  port: number;
  dir: string;
  stop(): Promise<void>;
}

export interface ZoneSpec {
  /** Records after the SOA/NS lines, in zone-file syntax, names relative to the origin. */
  records: string;
  /** SOA minimum (the negative-caching TTL); default 60. */
  negativeTtl?: number;
  /** Default TTL of the records; default 300. */
  ttl?: number;
}

/**
 * Zones by origin (`example.test`). A zone given as `null` is configured but
 * has no data: NSD answers SERVFAIL for it, which is how tests get a SERVFAIL.
 */
export type Zones = Record<string, ZoneSpec | string | null>;

function zoneFile(origin: string, spec: ZoneSpec): string {
  return [
    `$ORIGIN ${origin}.`,
    `$TTL ${spec.ttl ?? 300}`,
    `@ IN SOA ns.${origin}. hostmaster.${origin}. 1 3600 900 604800 ${spec.negativeTtl ?? 60}`,
    `@ IN NS ns.${origin}.`,
    `ns IN A 127.0.0.1`,
    spec.records,
    '',
  ].join('\n');
}

/** Throws (fails the test) when nsd is not installed: a missing service never passes silently. */
export function requireNsd(): void {
  if (!existsSync(NSD)) throw new Error(`${NSD} not found: install Debian's nsd package (.ci/run does)`);
}

export async function startDnsServer(zones: Zones): Promise<DnsServer> {
  requireNsd();
  const dir = mkdtempSync(join(tmpdir(), 'pq-nsd-'));
  const port = await freePort();
  const conf: string[] = [
    'server:',
    `  ip-address: 127.0.0.1@${port}`,
    `  port: ${port}`,
    '  do-ip6: no',
    '  username: ""',
    '  chroot: ""',
    `  zonesdir: "${dir}"`,
    `  pidfile: "${dir}/nsd.pid"`,
    '  database: ""',
    `  xfrdfile: "${dir}/xfrd.state"`,
    `  zonelistfile: "${dir}/zone.list"`,
    `  logfile: "${dir}/nsd.log"`,
    '  server-count: 1',
    '  verbosity: 1',
    '  hide-version: yes',
    'remote-control:',
    '  control-enable: no',
  ];
  for (const [origin, spec] of Object.entries(zones)) {
    const file = `${origin}.zone`;
    if (spec !== null) writeFileSync(join(dir, file), zoneFile(origin, typeof spec === 'string' ? { records: spec } : spec));
    conf.push('zone:', `  name: "${origin}"`, `  zonefile: "${file}"`);
  }
  writeFileSync(join(dir, 'nsd.conf'), conf.join('\n') + '\n');
  const check = spawnSync('/usr/sbin/nsd-checkconf', [join(dir, 'nsd.conf')], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`nsd-checkconf: ${check.stderr || check.stdout}`);

  const child: ChildProcess = spawn(NSD, ['-d', '-c', join(dir, 'nsd.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  // Ready when it answers a query for the first zone's SOA.
  const first = Object.keys(zones)[0] ?? 'test';
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) {
      const log = existsSync(join(dir, 'nsd.log')) ? readFileSync(join(dir, 'nsd.log'), 'utf8') : '';
      throw new Error(`nsd exited with ${child.exitCode}: ${output}${log}`);
    }
    if (await answers(port, first)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nsd did not answer on port ${port}: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    server: `127.0.0.1:${port}`,
    port,
    dir,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function answers(port: number, name: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.close();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), 200);
    s.on('message', () => done(true));
    s.on('error', () => done(false));
    s.send(packet.encode({ type: 'query', id: 1, questions: [{ type: 'SOA', name, class: 'IN' }] }), port, '127.0.0.1');
  });
}

/**
 * A UDP and TCP port that never answers: for timeouts. A fault-injection
 * fake, the only place tests do not use a real server.
 */
export async function silentDnsServer(): Promise<{ server: string; stop(): Promise<void> }> {
  const port = await freePort();
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(port, '127.0.0.1', () => resolve()));
  return { server: `127.0.0.1:${port}`, stop: () => new Promise<void>((r) => s.close(() => r())) };
}
