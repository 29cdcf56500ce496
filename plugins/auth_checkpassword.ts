/**
 * auth_checkpassword — SMTP AUTH by a checkpassword-compatible program (the
 * interface of D. J. Bernstein's checkpassword, used by qmail and its
 * add-ons): vpopmail's `vchkpw`, `checkpassword-pam`, `cmd5checkpw`, or a
 * script of your own. Standalone mode; see `auth:` in the config for when AUTH
 * is offered.
 *
 * Options:
 *   program: string       the program (absolute, or relative to the config directory) (required)
 *   args: string[]        its arguments (default ['/bin/true']): a checkpassword program runs them
 *                         as a command after a good password, so a harmless one is needed
 *   env: {NAME: value}    extra environment variables (default {})
 *   run_timeout: number   seconds the program may take; then it is killed (with anything it
 *                         started) and the attempt is a temporary failure, 454 (default 10)
 *   max_running: integer  programs running at once; further attempts wait their turn (default 8)
 *   cram_md5: boolean     offer CRAM-MD5 too (default false), passing `user\0response\0challenge\0`
 *                         as qmail-smtpd's AUTH patch does; only for programs that check that
 *                         (vchkpw does, for users with a cleartext password)
 *
 * The interface: the program reads `user\0password\0timestamp\0` from file
 * descriptor 3 (the timestamp is the Unix time); exit 0 means the password is
 * good, 1 that it is not (unknown user included: the interface cannot tell
 * them apart), 2 that it was misused, 111 a temporary failure. Decisions: 0 is
 * OK, 1 is DENY (535 5.7.8, counted by the brute-force brake; the chain
 * stops there), anything else, a signal, a crash or the timeout is DENYSOFT
 * (454 4.7.0, the client tries again later and nothing is counted). So list
 * this plugin after plugins that decline users they do not know
 * (auth_flat_file): it never declines.
 *
 * No shell is involved (the program is spawned with an argument array) and it
 * gets a minimal environment: PATH=/usr/local/bin:/usr/bin:/bin, and the
 * tcpserver variables vchkpw reads (TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP,
 * TCPLOCALPORT, PROTO=TCP), plus `env`. Standard input is /dev/null; what it
 * prints is logged (the first 1000 characters) when it does not exit 0.
 *
 *   - auth_checkpassword:
 *       program: /home/vpopmail/bin/vchkpw
 *       args: [/bin/true]
 *
 * vchkpw must run as root or the vpopmail user: prequeue runs it as itself.
 * Debian ships no `checkpassword` package (bookworm has none), so the tests
 * use a script of their own.
 *
 * Never immune: a relay client that authenticates must still be checked.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { z } from 'zod';
import { definePlugin, type AuthRequest, type HookContext } from '../src/plugin/api';
import { deny, denysoft, ok, type Verdict } from '../src/plugin/decision';

const OUTPUT_LIMIT = 1000;

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  error?: Error;
  output: string;
}

/** A counting semaphore: at most `max` runs at once, the rest queue in order. */
function limiter(max: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (fn) => {
    // A finishing run hands its slot straight to the first waiter, so a newcomer cannot slip in between.
    if (running >= max) await new Promise<void>((r) => waiting.push(r));
    else running++;
    try {
      return await fn();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
}

export default definePlugin({
  description: 'SMTP AUTH by a checkpassword-compatible program (vchkpw, checkpassword-pam...)',
  defaults: { immune: false },
  options: z
    .object({
      program: z.string().min(1),
      args: z.array(z.string()).default(['/bin/true']),
      env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'not an environment variable name'), z.string()).default({}),
      run_timeout: z.number().positive().max(300).default(10),
      max_running: z.number().int().min(1).max(256).default(8),
      cram_md5: z.boolean().default(false),
    })
    .strict(),
  create(opts, env) {
    const program = resolve(env.configDir, opts.program);
    // A missing or non-executable program is a config error now, not a 454 at every login.
    try {
      accessSync(program, constants.X_OK);
    } catch (err) {
      throw new Error(`program ${program} cannot be run: ${(err as Error).message}`);
    }
    const gate = limiter(opts.max_running);

    const run = (ctx: HookContext, input: Buffer): Promise<RunResult> =>
      new Promise((done) => {
        const c = ctx.conn;
        const childEnv: Record<string, string> = {
          PATH: '/usr/local/bin:/usr/bin:/bin',
          PROTO: 'TCP',
          TCPREMOTEIP: c.client.addr,
          TCPREMOTEPORT: String(c.client.port),
          TCPLOCALIP: c.local.addr,
          TCPLOCALPORT: String(c.local.port),
          ...opts.env,
        };
        let output = '';
        let timedOut = false;
        let settled = false;
        let error: Error | undefined;
        // Its own process group, so the timeout also kills what it started (the args command, a helper).
        const child = spawn(program, opts.args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: childEnv, detached: true });
        const killGroup = (): void => {
          try {
            if (child.pid) process.kill(-child.pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        };
        const timer = setTimeout(() => {
          timedOut = true;
          killGroup();
        }, opts.run_timeout * 1000);
        const collect = (d: Buffer): void => {
          if (output.length < OUTPUT_LIMIT) output += d.toString('utf8');
        };
        child.stdout!.on('data', collect);
        child.stderr!.on('data', collect);
        const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          // A good password runs `args` in the group; anything it left behind goes now.
          if (code !== 0) killGroup();
          done({ code, signal, timedOut, error, output: output.slice(0, OUTPUT_LIMIT).trim() });
        };
        child.on('error', (err) => {
          error = err;
          finish(null, null);
        });
        child.on('close', finish);
        const fd3 = child.stdio[3] as Writable | null;
        // A program that exits without reading (a wrong argument, a crash) closes the pipe: EPIPE is no news.
        fd3?.on('error', () => undefined);
        fd3?.end(input);
      });

    const check = async (ctx: HookContext, req: AuthRequest, secret: string, third: string): Promise<Verdict> => {
      // NUL separates the fields: one inside a value would forge another (the core refuses them already).
      if ([req.user, secret, third].some((s) => s.includes('\0'))) return deny();
      const input = Buffer.from(`${req.user}\0${secret}\0${third}\0`, 'utf8');
      const r = await gate(() => run(ctx, input));
      const what = `${opts.program} for ${req.user}`;
      if (r.code === 0) {
        ctx.result({ pass: `${req.user} (${req.mechanism})` });
        return ok();
      }
      if (r.code === 1) {
        ctx.result({ fail: `${req.user}: rejected by ${opts.program}` });
        if (r.output) ctx.log.info(`${what} exited 1: ${r.output}`);
        return deny();
      }
      const why = r.error
        ? `could not run: ${r.error.message}`
        : r.timedOut
          ? `killed after ${opts.run_timeout} s`
          : r.signal
            ? `killed by ${r.signal}`
            : r.code === 2
              ? 'exited 2 (misused: check program and args)'
              : `exited ${r.code}`;
      ctx.result({ err: `${req.user}: ${opts.program} ${why}` });
      ctx.log.warn(`${what} ${why}${r.output ? `: ${r.output}` : ''}`);
      return denysoft();
    };

    const timestamp = (): string => String(Math.floor(Date.now() / 1000));
    return {
      auth_plain: (ctx, req) => check(ctx, req, req.password ?? '', timestamp()),
      auth_login: (ctx, req) => check(ctx, req, req.password ?? '', timestamp()),
      ...(opts.cram_md5
        ? { auth_cram_md5: (ctx: HookContext, req: AuthRequest) => check(ctx, req, req.response ?? '', req.challenge ?? '') }
        : {}),
    };
  },
});
