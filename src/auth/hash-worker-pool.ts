/**
 * A small fixed-size pool of worker threads for the slow password-hash
 * checks (bcrypt, sha-crypt, argon2: 50-600 ms of CPU each, by design). Run
 * on the main thread, each would stall every SMTP session of the process.
 *
 * - Workers start when first needed, at most `size` of them, each doing one
 *   check at a time; further checks wait in a queue of at most `maxQueued`.
 * - Every failure to get an answer is a HashVerifyError, a temporary error
 *   (the caller answers "try again later", never "logged in"): the queue is
 *   full, the check took longer than `timeoutMs` (queue wait included; a busy
 *   worker is then terminated, as a running hash cannot be interrupted), the
 *   worker died, the hash library threw, or the pool is closed.
 * - A worker that dies (crash, timeout) is replaced when work is waiting, or
 *   at the next check.
 * - Idle workers are unref'd, so a pool nobody closed never keeps the process
 *   alive; close() terminates them all (plugin shutdown: reloads, exit).
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { HashReply, HashScheme, HashTask } from './hash-worker';

export type { HashScheme } from './hash-worker';

export type HashVerifyFailure = 'queue_full' | 'timeout' | 'worker_exit' | 'error' | 'closed';

/** A check that got no answer: a temporary failure, never a match. */
export class HashVerifyError extends Error {
  constructor(
    readonly reason: HashVerifyFailure,
    message: string,
  ) {
    super(message);
    this.name = 'HashVerifyError';
  }
}

export interface HashWorkerPoolOptions {
  /** Worker threads at most (default 2). */
  size?: number;
  /** Checks waiting for a free worker at most; one more fails at once (default 64). */
  maxQueued?: number;
  /** Milliseconds a check may take, waiting included (default 10000). */
  timeoutMs?: number;
  /** The worker script (default: hash-worker.js next to this file); tests give a fault-injecting wrapper. */
  script?: string;
}

interface Task extends HashTask {
  resolve(match: boolean): void;
  reject(err: HashVerifyError): void;
  timer: NodeJS.Timeout;
  slot?: Slot;
}

interface Slot {
  worker: Worker;
  task: Task | undefined;
  /** Set once the slot left the pool (exit, termination): late messages and events are ignored. */
  gone: boolean;
}

export class HashWorkerPool {
  readonly size: number;
  readonly maxQueued: number;
  readonly timeoutMs: number;
  private readonly script: string;
  private readonly slots = new Set<Slot>();
  private readonly queue: Task[] = [];
  private readonly terminating = new Set<Promise<number>>();
  private nextId = 1;
  private closed = false;

  constructor(opts: HashWorkerPoolOptions = {}) {
    this.size = opts.size ?? 2;
    this.maxQueued = opts.maxQueued ?? 64;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.script = opts.script ?? join(__dirname, 'hash-worker.js');
    if (!Number.isInteger(this.size) || this.size < 1) throw new Error(`hash worker pool: size must be a positive integer, not ${this.size}`);
    if (!Number.isInteger(this.maxQueued) || this.maxQueued < 0) throw new Error(`hash worker pool: maxQueued must be an integer >= 0`);
    if (!(this.timeoutMs > 0)) throw new Error('hash worker pool: timeoutMs must be positive');
  }

  /** Thread ids of the live workers (for logs and tests). */
  get threadIds(): number[] {
    return [...this.slots].map((s) => s.worker.threadId);
  }

  /** Checks waiting for a worker. */
  get queued(): number {
    return this.queue.length;
  }

  /** Whether `password` matches `hash`; rejects with HashVerifyError when no answer could be had. */
  verify(scheme: HashScheme, password: string, hash: string): Promise<boolean> {
    if (this.closed) return Promise.reject(new HashVerifyError('closed', 'hash worker pool is closed'));
    const busy = [...this.slots].every((s) => s.task);
    if (busy && this.slots.size >= this.size && this.queue.length >= this.maxQueued) {
      return Promise.reject(new HashVerifyError('queue_full', `hash check queue full (${this.maxQueued} waiting, ${this.size} running)`));
    }
    return new Promise<boolean>((resolve, reject) => {
      const task: Task = {
        id: this.nextId++,
        scheme,
        password,
        hash,
        resolve,
        reject,
        timer: setTimeout(() => this.timedOut(task), this.timeoutMs),
      };
      this.queue.push(task);
      this.dispatch();
    });
  }

  /** Fails what is waiting or running and terminates every worker; the pool takes no more checks. */
  async close(): Promise<void> {
    this.closed = true;
    for (const task of this.queue.splice(0)) this.settle(task, new HashVerifyError('closed', 'hash worker pool closed'));
    for (const slot of [...this.slots]) this.drop(slot, new HashVerifyError('closed', 'hash worker pool closed'));
    await Promise.allSettled([...this.terminating]);
  }

  /** Gives waiting tasks to idle workers, starting workers up to `size`. */
  private dispatch(): void {
    while (this.queue.length && !this.closed) {
      let slot = [...this.slots].find((s) => !s.task);
      if (!slot && this.slots.size >= this.size) return;
      const task = this.queue.shift()!;
      try {
        slot ??= this.spawn();
      } catch (err) {
        this.settle(task, new HashVerifyError('worker_exit', `could not start a hash worker: ${(err as Error).message}`));
        continue;
      }
      task.slot = slot;
      slot.task = task;
      slot.worker.ref();
      const { id, scheme, password, hash } = task;
      slot.worker.postMessage({ id, scheme, password, hash } satisfies HashTask);
    }
  }

  private spawn(): Slot {
    // Messages posted before the worker has loaded wait in its port: no ready handshake needed.
    const worker = new Worker(this.script);
    const slot: Slot = { worker, task: undefined, gone: false };
    this.slots.add(slot);
    worker.unref();
    worker.on('message', (reply: HashReply) => {
      const task = slot.task;
      if (slot.gone || !task || task.id !== reply.id) return;
      slot.task = undefined;
      task.slot = undefined;
      worker.unref();
      if ('error' in reply) this.settle(task, new HashVerifyError('error', `hash check failed: ${reply.error}`));
      else this.settle(task, reply.match);
      this.dispatch();
    });
    let why = 'exited';
    worker.on('error', (err) => {
      why = `crashed: ${err.message}`;
    });
    worker.on('exit', (code) => {
      if (slot.gone) return;
      slot.gone = true;
      this.slots.delete(slot);
      if (slot.task) this.settle(slot.task, new HashVerifyError('worker_exit', `hash worker ${why} (code ${code})`));
      slot.task = undefined;
      this.dispatch();
    });
    return slot;
  }

  private timedOut(task: Task): void {
    const err = new HashVerifyError('timeout', `hash check took more than ${this.timeoutMs} ms`);
    if (task.slot) {
      // A running hash cannot be interrupted: the thread goes, a new one comes when needed.
      this.drop(task.slot, err);
      this.dispatch();
      return;
    }
    const i = this.queue.indexOf(task);
    if (i >= 0) this.queue.splice(i, 1);
    this.settle(task, err);
  }

  /** Removes a slot now, failing its task, and terminates its thread. */
  private drop(slot: Slot, err: HashVerifyError): void {
    if (slot.gone) return;
    slot.gone = true;
    this.slots.delete(slot);
    if (slot.task) this.settle(slot.task, err);
    slot.task = undefined;
    const done = slot.worker.terminate();
    this.terminating.add(done);
    const forget = (): void => void this.terminating.delete(done);
    done.then(forget, forget);
  }

  private settle(task: Task, result: boolean | HashVerifyError): void {
    clearTimeout(task.timer);
    task.slot = undefined;
    if (result instanceof HashVerifyError) task.reject(result);
    else task.resolve(result);
  }
}
