/**
 * Throughput benchmark: smtp-source -> smtp-sink directly, and smtp-source ->
 * prequeue -> smtp-sink, per message size and session count, plus prequeue's
 * memory. A measurement, not a test: it always exits 0 once it has measured.
 *
 *   npm run bench [-- --quick] [--json] [--cells 1k:1,5m:10]
 *
 * See bench/README.md for how to read the output.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = resolve(__dirname, '../..');
const CLI = join(ROOT, 'dist/src/cli.js');

const SIZES = { '1k': 1024, '100k': 100 * 1024, '5m': 5 * 1024 * 1024 } as const;
type SizeName = keyof typeof SIZES;
const SESSIONS = [1, 10, 50] as const;

/*
 * Messages per run, sized so that a run takes from half a second (direct) to a
 * few seconds (through prequeue) on a 2-core machine: long enough that process
 * start-up (a few ms) is noise, short enough that nine cells of five rounds of
 * both paths stay well within five minutes.
 */
const MESSAGES: Record<SizeName, { full: number; quick: number; warmup: number }> = {
  '1k': { full: 3000, quick: 300, warmup: 500 },
  '100k': { full: 1000, quick: 100, warmup: 100 },
  '5m': { full: 100, quick: 10, warmup: 10 },
};
/*
 * On a VM the one-session rate swings by 2x with how idle the other vCPU is
 * (waking a halted vCPU is slow), and that drifts within a minute. Alternating
 * direct and proxied runs and taking the median of the paired ratios keeps a
 * drift from landing on one path only; every other pair runs proxied first, so
 * that a steady drift within a pair favours neither path. Five pairs: on the
 * 2-core development VM one 1 KB pair's ratio ranged from 0.26 to 0.75 within
 * a run, and with three pairs two unlucky ones decided the median.
 */
const ROUNDS = { full: 5, quick: 1 };
const RSS_SAMPLE_MS = 50;
/* A run whose counter has not moved for this long is hung, not slow: even 5 MB at 1 session completes a message every ~0.1 s. */
const STALL_MS = 15_000;
/* Cores' worth of CPU used by unrelated processes above which the run is flagged as disturbed. */
const BUSY_NEIGHBOURS = 0.2;

interface Cell {
  size: SizeName;
  sessions: number;
}

interface RunResult {
  seconds: number;
  rate: number;
  /** Messages the sink counted during the run (0 when the sink's counter was unreadable). */
  delivered: number;
  error?: string;
}

interface PathResult {
  /** Median of the runs' rates, msg/s; null if a run failed. */
  rate: number | null;
  runs: RunResult[];
  /** The first failed run's reason; the cell stops at it. */
  error?: string;
}

interface CellResult extends Cell {
  bytes: number;
  messagesPerRun: number;
  rounds: number;
  direct: PathResult;
  proxied: PathResult;
  /** Median over the rounds of proxied rate / direct rate. */
  ratio: number | null;
  ratioMin: number | null;
  ratioMax: number | null;
  /** Highest VmRSS seen while the proxied runs of this cell were going (kB). */
  rssPeakKB: number | null;
  /** prequeue's CPU time (all threads) per message in the proxied runs, ms. */
  cpuMsPerMessage: number | null;
  /** CPU cores kept busy by processes outside the bench during the cell: a loaded machine skews the ratio. */
  otherCores: number | null;
}

interface Target {
  name: string;
  threshold: string;
  value: string;
  verdict: 'PASS' | 'FAIL' | 'SKIP';
  note?: string;
}

// ---------------------------------------------------------------- arguments

const USAGE = `usage: node dist/bench/run.js [--quick] [--json] [--cells SIZE:SESSIONS,...] [--messages N] [--rounds R] [--timeout SECONDS] [--node-arg ARG]...

  --quick          fewer messages per cell (a smoke run; numbers are noisy)
  --json           print the results as JSON on stdout (progress still goes to stderr)
  --cells LIST     only these cells, e.g. 1k:1,5m:10 (sizes: ${Object.keys(SIZES).join(', ')}; any session count)
  --messages N     messages per run for every cell, instead of the per-size defaults
  --rounds R       direct/proxied pairs per cell, median reported (default 5, --quick 1)
  --timeout S      give up on one smtp-source run after S seconds (default 120)
  --node-arg ARG   pass ARG to the node running prequeue (repeatable), e.g. --node-arg=--max-semi-space-size=4`;

function parseCells(spec: string): Cell[] {
  return spec.split(',').map((part) => {
    const m = /^\s*(\w+):(\d+)\s*$/.exec(part);
    const size = m?.[1]?.toLowerCase();
    if (!m || !size || !(size in SIZES) || Number(m[2]) < 1) {
      throw new Error(`bad cell "${part}": expected SIZE:SESSIONS with SIZE one of ${Object.keys(SIZES).join(', ')}`);
    }
    return { size: size as SizeName, sessions: Number(m[2]) };
  });
}

function parseOptions(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      cells: { type: 'string' },
      messages: { type: 'string' },
      rounds: { type: 'string' },
      timeout: { type: 'string', default: '120' },
      help: { type: 'boolean', short: 'h', default: false },
      'node-arg': { type: 'string', multiple: true, default: [] },
    },
    strict: true,
    allowPositionals: false,
  });
  const cells = values.cells
    ? parseCells(values.cells)
    : (Object.keys(SIZES) as SizeName[]).flatMap((size) => SESSIONS.map((sessions) => ({ size, sessions })));
  const messages = values.messages === undefined ? undefined : Number(values.messages);
  if (messages !== undefined && !(Number.isInteger(messages) && messages > 0)) throw new Error(`--messages: expected a positive integer`);
  const rounds = values.rounds === undefined ? (values.quick ? ROUNDS.quick : ROUNDS.full) : Number(values.rounds);
  if (!(Number.isInteger(rounds) && rounds > 0)) throw new Error(`--rounds: expected a positive integer`);
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new Error(`--timeout: expected a positive number of seconds`);
  return { quick: values.quick, json: values.json, help: values.help, cells, messages, rounds, timeoutMs: timeout * 1000, nodeArgs: values['node-arg'] };
}

type Options = ReturnType<typeof parseOptions>;

// ---------------------------------------------------------------- processes

const children = new Set<ChildProcess>();

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

// An interrupted bench must not leave a sink or a proxy holding ports.
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => process.exit(130));
}

function progress(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => res(port));
    });
  });
}

/**
 * Ready means "answers 220", not "accepts TCP": a bare connect would also show up
 * as a lost connection in the proxy's log. QUIT keeps the probe a clean session.
 */
async function waitForGreeting(port: number, child: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited (${child.exitCode ?? child.signalCode}) before listening`);
    const ok = await new Promise<boolean>((res) => {
      const sock = connect(port, '127.0.0.1');
      let buf = '';
      sock.setTimeout(2000, () => sock.destroy());
      sock.on('data', (d) => {
        buf += d.toString('latin1');
        if (/^220[ -]/m.test(buf) && buf.endsWith('\n')) {
          sock.end('QUIT\r\n');
          res(true);
        }
      });
      sock.on('error', () => res(false));
      sock.on('close', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`no SMTP greeting on 127.0.0.1:${port} after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once('exit', () => r()));
}

async function stop(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited(child);
  clearTimeout(timer);
}

/** Keeps the tail of a child's output, to show why it died. */
function tail(stream: NodeJS.ReadableStream | null, keep = 4096): () => string {
  let text = '';
  stream?.on('data', (d: Buffer) => {
    text = (text + d.toString('utf8')).slice(-keep);
  });
  return () => text.trim();
}

// ---------------------------------------------------------------- smtp-sink

class Sink {
  readonly port: number;
  readonly child: ChildProcess;
  private last = 0;

  private constructor(port: number, child: ChildProcess) {
    this.port = port;
    this.child = child;
    // -c prints "sess=N quit=N mesg=N\r" as it goes; the last mesg= is what it has received so far.
    let pending = '';
    child.stdout?.on('data', (d: Buffer) => {
      pending += d.toString('latin1');
      const all = [...pending.matchAll(/mesg=(\d+)/g)];
      if (all.length) this.last = Number(all[all.length - 1]![1]);
      pending = pending.slice(-64);
    });
  }

  static async start(): Promise<Sink> {
    const port = await freePort();
    // smtp-sink refuses to run as root without a user to drop to.
    const asRoot = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
    const child = track(spawn('smtp-sink', [...asRoot, '-c', `127.0.0.1:${port}`, '1000'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const err = tail(child.stderr);
    try {
      await waitForGreeting(port, child);
    } catch (e) {
      throw new Error(`smtp-sink: ${(e as Error).message}${err() ? `\n${err()}` : ''}`);
    }
    return new Sink(port, child);
  }

  get messages(): number {
    return this.last;
  }

  /* The proxy answers the client's dot only after the sink's 250, but the sink prints its counter after replying: give it a moment. */
  async settle(expected: number): Promise<number> {
    const until = Date.now() + 2000;
    while (this.last < expected && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    return this.last;
  }

  stop(): Promise<void> {
    return stop(this.child, 2000);
  }
}

// ---------------------------------------------------------------- prequeue

class Prequeue {
  readonly port: number;
  readonly child: ChildProcess;
  readonly output: () => string;

  private constructor(port: number, child: ChildProcess, output: () => string) {
    this.port = port;
    this.child = child;
    this.output = output;
  }

  static async start(dir: string, sinkPort: number, nodeArgs: string[]): Promise<Prequeue> {
    const port = await freePort();
    const file = join(dir, `prequeue-${port}.yaml`);
    writeFileSync(
      file,
      [
        'mode: standalone',
        `listen: 127.0.0.1:${port}`,
        `downstream: { address: 127.0.0.1:${sinkPort} }`,
        '# the direct path gets no Received header either: both paths carry the same bytes',
        'received_header: never',
        'log: { level: warn }',
        '# every session comes from 127.0.0.1, and 5 MB plus smtp-source headers must fit',
        'limits: { message_size: 20000000, connections: 1000, connections_per_client: 1000 }',
        'plugins: []',
        '',
      ].join('\n'),
    );
    const child = track(spawn(process.execPath, [...nodeArgs, CLI, '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    const out = tail(child.stdout);
    const err = tail(child.stderr);
    const output = (): string => [out(), err()].filter(Boolean).join('\n');
    try {
      await waitForGreeting(port, child);
    } catch (e) {
      await stop(child, 1000);
      throw new Error(`prequeue: ${(e as Error).message}${output() ? `\n${output()}` : ''}`);
    }
    return new Prequeue(port, child, output);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** kB values from /proc/<pid>/status, or null once the process is gone. */
  memory(): { rssKB: number; hwmKB: number } | null {
    try {
      const status = readFileSync(`/proc/${this.child.pid}/status`, 'latin1');
      const field = (name: string): number => Number(new RegExp(`^${name}:\\s*(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
      return { rssKB: field('VmRSS'), hwmKB: field('VmHWM') };
    } catch {
      return null;
    }
  }

  /** SIGTERM drains transactions (up to shutdown_timeout, 30 s by default) before exiting. */
  stop(): Promise<void> {
    return stop(this.child, 40_000);
  }
}

/** Samples VmRSS while a run is going; the peak of a cell is a better story than the end-of-run HWM alone. */
function sampleRss(pq: Prequeue): () => number | null {
  let peak: number | null = null;
  const take = (): void => {
    const m = pq.memory();
    if (m && Number.isFinite(m.rssKB)) peak = Math.max(peak ?? 0, m.rssKB);
  };
  take();
  const timer = setInterval(take, RSS_SAMPLE_MS);
  return () => {
    clearInterval(timer);
    take();
    return peak;
  };
}

// ---------------------------------------------------------------- CPU accounting

const TICK_MS = 10; // USER_HZ is 100 on every Linux the bench is meant for

/** utime+stime of a process (all its threads), in ticks; with `reaped`, also of its waited-for children. */
function processTicks(pid: number | undefined, reaped = false): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name is in parentheses and may itself contain spaces; fields are counted after it.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const field = (n: number): number => Number(f[n - 3]) || 0;
    return field(14) + field(15) + (reaped ? field(16) + field(17) : 0);
  } catch {
    return 0;
  }
}

interface CpuSnapshot {
  busy: number;
  total: number;
  ours: number;
  prequeue: number;
}

/**
 * The bench counts its own processes (itself, the smtp-source runs it has
 * reaped, the sink, prequeue) so that what is left of the machine's busy time
 * is someone else's: on two cores, one busy neighbour halves what we measure.
 */
function cpuSnapshot(prequeuePid: number | undefined, sinkPid: number | undefined): CpuSnapshot {
  const v = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
  // Steal is time the hypervisor gave to someone else: as unavailable to us as a neighbour's process.
  const busy = user + nice + system + irq + softirq + steal;
  const prequeue = processTicks(prequeuePid);
  return { busy, total: busy + idle + iowait, ours: processTicks(process.pid, true) + processTicks(sinkPid) + prequeue, prequeue };
}

function otherCores(a: CpuSnapshot, b: CpuSnapshot): number | null {
  const elapsed = (b.total - a.total) / cpus().length;
  if (elapsed <= 0) return null;
  return Math.max(0, b.busy - a.busy - (b.ours - a.ours)) / elapsed;
}

// ---------------------------------------------------------------- smtp-source

/**
 * One smtp-source run. Without -d it opens one connection per message, on both
 * paths alike, so per-connection costs (greeting, EHLO, prequeue's downstream
 * connect) are part of what is measured: that is how Postfix uses a proxy.
 */
function source(port: number, bytes: number, sessions: number, messages: number, timeoutMs: number): Promise<Omit<RunResult, 'delivered'>> {
  const args = ['-s', String(sessions), '-m', String(messages), '-l', String(bytes), '-c', '-f', 'from@example.net', '-t', 'to@example.test', `127.0.0.1:${port}`];
  return new Promise((res) => {
    const started = process.hrtime.bigint();
    const child = track(spawn('smtp-source', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const err = tail(child.stderr);
    let count = 0;
    let lastProgress = Date.now();
    let killedFor: string | undefined;
    child.stdout?.on('data', (d: Buffer) => {
      // -c prints "N\r" after each completed DATA; it is unbuffered, so it doubles as a liveness signal.
      const all = d.toString('latin1').match(/\d+/g);
      if (all) {
        count = Number(all[all.length - 1]);
        lastProgress = Date.now();
      }
    });
    const watchdog = setInterval(() => {
      if (Number(process.hrtime.bigint() - started) / 1e6 > timeoutMs) {
        killedFor = `timed out after ${timeoutMs / 1000} s`;
      } else if (Date.now() - lastProgress > STALL_MS) {
        killedFor = `no progress for ${STALL_MS / 1000} s`;
      }
      if (killedFor) child.kill('SIGKILL');
    }, 250);
    child.once('exit', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      clearInterval(watchdog);
      // Output may still be in flight when 'exit' fires; the counter only matters for a clean run.
      setImmediate(() => {
        let error: string | undefined;
        if (killedFor) error = `${killedFor} (${count}/${messages} messages)`;
        else if (code !== 0) error = `smtp-source exited ${code ?? signal}: ${err().split('\n').pop() || 'no message'} (${count}/${messages} messages)`;
        res({ seconds, rate: error ? count / seconds : messages / seconds, ...(error ? { error } : {}) });
      });
    });
  });
}

async function measure(sink: Sink, port: number, bytes: number, sessions: number, messages: number, timeoutMs: number): Promise<RunResult> {
  const before = sink.messages;
  const r = await source(port, bytes, sessions, messages, timeoutMs);
  const delivered = (await sink.settle(before + messages)) - before;
  if (!r.error && delivered !== messages) {
    return { ...r, delivered, error: `smtp-source finished but the sink counted ${delivered}/${messages} messages` };
  }
  return { ...r, delivered };
}

// ---------------------------------------------------------------- report

function fmtRate(r: PathResult): string {
  return r.rate === null ? 'error' : r.rate >= 100 ? r.rate.toFixed(0) : r.rate.toFixed(1);
}

function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function pathResult(runs: RunResult[]): PathResult {
  const failed = runs.find((r) => r.error);
  if (failed) return { rate: null, runs, error: failed.error! };
  return { rate: median(runs.map((r) => r.rate)), runs };
}

function fmtRatio(r: CellResult): string {
  if (r.ratio === null) return '-';
  return r.rounds > 1 ? `${r.ratio.toFixed(2)} (${r.ratioMin!.toFixed(2)}-${r.ratioMax!.toFixed(2)})` : r.ratio.toFixed(2);
}

function fmtCores(n: number | null): string {
  return n === null ? '-' : n.toFixed(2);
}

function fmtMB(kB: number | null): string {
  return kB === null ? '-' : (kB / 1024).toFixed(1);
}

/** `align` has one letter per column: l or r. */
function table(rows: string[][], align: string): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) => r.map((c, i) => (align[i] === 'r' ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd())
    .join('\n');
}

function evaluate(cells: CellResult[], peakKB: number | null, partial: boolean): Target[] {
  const ratioTarget = (size: SizeName, sessions: number, min: number): Target => {
    const name = `ratio ${size} / ${sessions} session${sessions > 1 ? 's' : ''}`;
    const threshold = `>= ${min.toFixed(2)}`;
    const c = cells.find((x) => x.size === size && x.sessions === sessions);
    if (!c) return { name, threshold, value: '-', verdict: 'SKIP', note: 'cell not run' };
    if (c.ratio === null) return { name, threshold, value: '-', verdict: 'FAIL', note: c.direct.error ?? c.proxied.error ?? 'no ratio' };
    return { name, threshold, value: c.ratio.toFixed(3), verdict: c.ratio >= min ? 'PASS' : 'FAIL' };
  };
  const rss: Target =
    peakKB === null
      ? { name: 'peak RSS', threshold: '< 120 MB', value: '-', verdict: 'SKIP', note: 'not measured' }
      : {
          name: 'peak RSS',
          threshold: '< 120 MB',
          value: `${fmtMB(peakKB)} MB`,
          verdict: peakKB < 120 * 1024 ? 'PASS' : 'FAIL',
          ...(partial ? { note: 'only the selected cells ran' } : {}),
        };
  return [ratioTarget('1k', 1, 0.25), ratioTarget('1k', 50, 0.4), ratioTarget('5m', 10, 0.5), rss];
}

// ---------------------------------------------------------------- main

function requireTool(name: string): void {
  // smtp-source with no arguments prints usage and exits non-zero; only ENOENT means "not installed".
  const r = spawnSync(name, [], { stdio: 'ignore' });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') throw new Error(`${name} not found in PATH (it comes with the postfix package)`);
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (opts.help) {
    console.log(USAGE);
    return 0;
  }
  if (!existsSync(CLI)) {
    console.error(`bench: ${CLI} not found; build first (npx tsc -p .)`);
    return 1;
  }
  for (const tool of ['smtp-source', 'smtp-sink']) requireTool(tool);

  const count = (size: SizeName): number => opts.messages ?? (opts.quick ? MESSAGES[size].quick : MESSAGES[size].full);
  const dir = mkdtempSync(join(tmpdir(), 'prequeue-bench-'));
  const startedAt = new Date();
  let sink: Sink | undefined;
  let pq: Prequeue | undefined;
  const results: CellResult[] = [];
  const notes: string[] = [];
  // Each prequeue process's HWM by pid; more than one only if one died and was restarted.
  const hwms = new Map<number, number>();
  let idleKB: number | null = null;
  let idleOtherCores: number | null = null;

  try {
    sink = await Sink.start();
    pq = await Prequeue.start(dir, sink.port, opts.nodeArgs);
    idleKB = pq.memory()?.rssKB ?? null;
    const quiet = cpuSnapshot(pq.child.pid, sink.child.pid);
    await new Promise((r) => setTimeout(r, 1000));
    idleOtherCores = otherCores(quiet, cpuSnapshot(pq.child.pid, sink.child.pid));
    progress(
      `bench: smtp-sink on :${sink.port}, prequeue (pid ${pq.child.pid}) on :${pq.port}, idle RSS ${fmtMB(idleKB)} MB, ` +
        `other load ${fmtCores(idleOtherCores)} of ${cpus().length} cores`,
    );

    // One pass over every selected size through both paths: JIT, the spool directory, page cache, socket buffers.
    const sizes = [...new Set(opts.cells.map((c) => c.size))];
    for (const size of sizes) {
      const n = opts.quick ? Math.ceil(MESSAGES[size].warmup / 3) : MESSAGES[size].warmup;
      for (const [label, port] of [
        ['direct', sink.port],
        ['prequeue', pq.port],
      ] as const) {
        const r = await measure(sink, port, SIZES[size], 10, n, opts.timeoutMs);
        if (r.error) {
          notes.push(`warm-up ${size} ${label}: ${r.error}`);
          progress(`bench: warm-up ${size} ${label}: ${r.error}`);
        }
      }
    }
    progress(`bench: warm-up done`);

    for (const cell of opts.cells) {
      if (!pq.alive) {
        const why = `prequeue exited (${pq.child.exitCode ?? pq.child.signalCode}); restarted before ${cell.size}:${cell.sessions}`;
        notes.push(`${why}; its last output:\n${pq.output()}`);
        progress(`bench: ${why}`);
        pq = await Prequeue.start(dir, sink.port, opts.nodeArgs);
      }
      const bytes = SIZES[cell.size];
      const messages = count(cell.size);
      const directRuns: RunResult[] = [];
      const proxiedRuns: RunResult[] = [];
      const ratios: number[] = [];
      let rssPeakKB: number | null = null;
      let pqTicks = 0;
      let pqMessages = 0;
      const c0 = cpuSnapshot(pq.child.pid, sink.child.pid);
      // Fixed for the cell (a restart happens between cells), and typed as such inside the closures.
      const cellSink = sink;
      const cellPq = pq;
      const runDirect = async (): Promise<RunResult> => {
        const d = await measure(cellSink, cellSink.port, bytes, cell.sessions, messages, opts.timeoutMs);
        directRuns.push(d);
        return d;
      };
      const runProxied = async (): Promise<RunResult> => {
        const done = sampleRss(cellPq);
        const a = cpuSnapshot(cellPq.child.pid, cellSink.child.pid);
        const p = await measure(cellSink, cellPq.port, bytes, cell.sessions, messages, opts.timeoutMs);
        const b = cpuSnapshot(cellPq.child.pid, cellSink.child.pid);
        const rss = done();
        if (rss !== null) rssPeakKB = Math.max(rssPeakKB ?? 0, rss);
        proxiedRuns.push(p);
        // A smaller count means prequeue was restarted under us: that run's CPU is unknown.
        if (!p.error && b.prequeue >= a.prequeue) {
          pqTicks += b.prequeue - a.prequeue;
          pqMessages += messages;
        }
        return p;
      };
      for (let round = 0; round < opts.rounds; round++) {
        const [first, second] = round % 2 === 0 ? [runDirect, runProxied] : [runProxied, runDirect];
        const x = await first();
        if (x.error) break;
        const y = await second();
        if (y.error) break;
        const [d, p] = round % 2 === 0 ? [x, y] : [y, x];
        ratios.push(p.rate / d.rate);
      }
      const other = otherCores(c0, cpuSnapshot(pq.child.pid, sink.child.pid));
      const hwm = pq.memory()?.hwmKB;
      if (hwm !== undefined && Number.isFinite(hwm)) hwms.set(pq.child.pid!, hwm);
      const direct = pathResult(directRuns);
      const proxied = pathResult(proxiedRuns);
      const complete = !direct.error && !proxied.error && ratios.length === opts.rounds;
      const result: CellResult = {
        ...cell,
        bytes,
        messagesPerRun: messages,
        rounds: opts.rounds,
        direct,
        proxied,
        ratio: complete ? median(ratios) : null,
        ratioMin: complete ? Math.min(...ratios) : null,
        ratioMax: complete ? Math.max(...ratios) : null,
        rssPeakKB,
        cpuMsPerMessage: pqMessages ? (pqTicks * TICK_MS) / pqMessages : null,
        otherCores: other,
      };
      results.push(result);
      progress(
        `bench: ${cell.size}:${cell.sessions} ${opts.rounds}x${messages}  direct ${fmtRate(direct)}/s  prequeue ${fmtRate(proxied)}/s  ` +
          `ratio ${fmtRatio(result)}  rss ${fmtMB(rssPeakKB)} MB  cpu ${result.cpuMsPerMessage?.toFixed(2) ?? '-'} ms/msg  other load ${fmtCores(other)}` +
          (direct.error ? `\n  direct: ${direct.error}` : '') +
          (proxied.error ? `\n  prequeue: ${proxied.error}` : ''),
      );
    }
    const end = pq.memory();
    if (end && Number.isFinite(end.hwmKB)) hwms.set(pq.child.pid!, end.hwmKB);
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    await pq?.stop();
    await sink?.stop();
    rmSync(dir, { recursive: true, force: true });
    return 1;
  }

  const stopping = Date.now();
  await pq.stop();
  const stopSeconds = (Date.now() - stopping) / 1000;
  if (pq.child.exitCode !== 0) notes.push(`prequeue did not exit cleanly on SIGTERM (${pq.child.exitCode ?? pq.child.signalCode}) after ${stopSeconds.toFixed(1)} s`);
  await sink.stop();
  rmSync(dir, { recursive: true, force: true });

  const hwmKB = hwms.size ? Math.max(...hwms.values()) : null;
  const sampled = results.map((r) => r.rssPeakKB).filter((x): x is number => x !== null);
  const candidates = [...(hwmKB === null ? [] : [hwmKB]), ...sampled];
  const peakKB = candidates.length ? Math.max(...candidates) : null;
  const allCells = (Object.keys(SIZES) as SizeName[]).every((size) => SESSIONS.every((n) => opts.cells.some((c) => c.size === size && c.sessions === n)));
  const targets = evaluate(results, peakKB, !allCells);

  if (opts.json) {
    const out = {
      started: startedAt.toISOString(),
      machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? '', kernel: release(), node: process.version },
      quick: opts.quick,
      rounds: opts.rounds,
      nodeArgs: opts.nodeArgs,
      cells: results,
      memory: { idleKB, hwmKB, peakKB },
      otherCoresBeforeStart: idleOtherCores,
      targets,
      notes,
    };
    console.log(JSON.stringify(out, null, 2));
    return 0;
  }

  const rows = [
    ['size', 'sessions', 'messages', 'direct msg/s', 'prequeue msg/s', 'ratio (range)', 'RSS peak MB', 'pq CPU ms/msg', 'other load'],
    ...results.map((r) => [
      r.size,
      String(r.sessions),
      `${r.rounds}x${r.messagesPerRun}`,
      fmtRate(r.direct),
      fmtRate(r.proxied),
      fmtRatio(r),
      fmtMB(r.rssPeakKB),
      r.cpuMsPerMessage === null ? '-' : r.cpuMsPerMessage.toFixed(2),
      fmtCores(r.otherCores),
    ]),
  ];
  console.log(`\nprequeue bench, ${startedAt.toISOString()}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}${opts.quick ? ', --quick' : ''}${opts.nodeArgs.length ? `, prequeue run with ${opts.nodeArgs.join(' ')}` : ''}\n`);
  console.log(table(rows, 'lrrrrrrrr'));
  const errors = results.flatMap((r) => [
    ...(r.direct.error ? [`${r.size}:${r.sessions} direct: ${r.direct.error}`] : []),
    ...(r.proxied.error ? [`${r.size}:${r.sessions} prequeue: ${r.proxied.error}`] : []),
  ]);
  if (errors.length) console.log(`\nerrors:\n  ${errors.join('\n  ')}`);
  const loaded = [idleOtherCores, ...results.map((r) => r.otherCores)].some((n) => n !== null && n > BUSY_NEIGHBOURS);
  if (loaded) {
    console.log(
      `\nwarning: other processes kept up to ${fmtCores(Math.max(idleOtherCores ?? 0, ...results.map((r) => r.otherCores ?? 0)))} of ${cpus().length} cores busy ` +
        `("other load"); the rates, and the ratios, are not representative. Rerun on a quiet machine.`,
    );
  }
  console.log(`\nprequeue memory: idle ${fmtMB(idleKB)} MB, VmHWM at end ${fmtMB(hwmKB)} MB, peak ${fmtMB(peakKB)} MB`);
  console.log(`\ntargets (no plugins):`);
  console.log(
    table([
      ['target', 'goal', 'measured', 'verdict'],
      ...targets.map((t) => [t.name, t.threshold, t.value, t.verdict + (t.note ? ` (${t.note})` : '')]),
    ], 'llrl'),
  );
  if (notes.length) console.log(`\nnotes:\n  ${notes.join('\n  ')}`);
  return 0;
}

void main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`bench: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
