/**
 * Keeps V8's heap to the size a mail proxy needs.
 *
 * Left alone, V8 sizes its heap for throughput on a big machine: the young
 * generation grows to 32 MiB, and message data (Buffers from sockets, from
 * smtp-server's DATA parser, read back from spool files) is freed only when the
 * small JavaScript objects that own it are collected, which with a big young
 * generation and few objects per megabyte can be tens of megabytes later. The
 * bench showed both as most of prequeue's peak RSS (bench/README.md).
 *
 * `--max-semi-space-size` would cap the young generation, but V8 reads it only
 * when the heap is created: it needs the launcher (NODE_OPTIONS, the unit
 * file), and a proxy should not depend on how it was started for its memory.
 * `--semi-space-growth-factor` is read each time the young generation grows,
 * so it can be set from inside: growth is held at 1 (none) while modules load,
 * then allowed (2) only while the young generation is under the cap. The cap
 * is applied when a collection is reported, between event-loop turns, so only
 * a turn that allocates megabytes of lasting objects could take the young
 * generation one doubling past it.
 *
 * Importing this module holds growth, so cli.ts imports it first.
 */
import v8 from 'node:v8';
import { PerformanceObserver } from 'node:perf_hooks';
import { runInNewContext } from 'node:vm';

const MiB = 1024 * 1024;
/**
 * Message bytes received between two forced young-generation collections.
 * Each received byte is held by about four short-lived Buffers on its way
 * (socket read, smtp-server's copy, the spool, the read-back), so this bounds
 * the dead Buffer memory waiting for a collection to some 32 MiB; a young
 * collection takes about a millisecond.
 */
export const COLLECT_EVERY = 8 * MiB;
/**
 * Buffers that lived through two young collections (a spool's in-memory part,
 * a read-back chunk waiting for the socket) sit in the old generation, which V8
 * collects for external memory only after it grew by 64 MiB. If Buffer memory
 * is still above this after a young collection, a full one (a few ms for a heap
 * this size) runs too, at most every MAJOR_INTERVAL ms.
 */
const BUFFER_CEILING = 40 * MiB;

const MAJOR_INTERVAL = 200;
let lastMajor = 0;

let growth = 0;
function setGrowth(factor: 1 | 2): void {
  if (factor === growth) return;
  growth = factor;
  v8.setFlagsFromString(`--semi-space-growth-factor=${factor}`);
}
setGrowth(1);

type Gc = (opts?: { type?: 'major' | 'minor' }) => void;
let gc: Gc | undefined;
/** V8's gc(), obtained without --expose-gc on the command line: only a new context gets it, never the main one. */
function collector(): Gc {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as Gc;
  }
  return gc;
}

let capBytes = 0;
let observer: PerformanceObserver | undefined;
let unseenBytes = 0;
let collecting = false;

function youngGenerationSize(): number {
  for (const s of v8.getHeapSpaceStatistics()) if (s.space_name === 'new_space') return s.space_size;
  return 0;
}

function applyCap(): void {
  setGrowth(capBytes === 0 || youngGenerationSize() < capBytes ? 2 : 1);
}

/**
 * Starts (or, on reload, re-tunes) the governor. `semiSpaceMb` caps each of the
 * young generation's two semi-spaces like node's --max-semi-space-size; 0 leaves
 * V8's own sizing. The first call also runs one full collection, so that V8
 * sets its old-generation limit from what the loaded server really keeps
 * instead of its initial guess for an empty heap.
 *
 * `oldGrowthPercent` is how far the old generation may grow past what the last
 * full collection left live before the next one (--heap-growing-percent, read
 * by V8 at each full collection; 0 is V8's own choice, up to 300% for a small
 * heap). At 1 KB messages what the old generation collects is mostly sessions
 * that outlived two young collections: left to V8 it reached 33 MiB around
 * 12 MiB live, and those pages were still held when the next burst of large
 * messages came (a 129 MB peak in one run). At 50% the full collections (a few
 * ms with this little live) come every thousand or so small messages.
 */
export function governHeap(opts: { semiSpaceMb: number; oldGrowthPercent: number }): void {
  const first = observer === undefined;
  capBytes = opts.semiSpaceMb * 2 * MiB;
  applyCap();
  v8.setFlagsFromString(`--heap-growing-percent=${opts.oldGrowthPercent}`);
  if (!first) return;
  collector()();
  // The young generation only grows at a collection, and every collection is reported here.
  observer = new PerformanceObserver(applyCap);
  observer.observe({ entryTypes: ['gc'] });
}

/**
 * The spool reports each chunk of message data it takes in; past COLLECT_EVERY
 * bytes a young collection runs, after the current I/O callbacks (a collection
 * inside one would only find their Buffers still in use).
 */
export function noteMessageBytes(n: number): void {
  if (observer === undefined) return;
  unseenBytes += n;
  if (unseenBytes < COLLECT_EVERY || collecting) return;
  collecting = true;
  setImmediate(() => {
    collecting = false;
    unseenBytes = 0;
    const gc = collector();
    gc({ type: 'minor' });
    const now = Date.now();
    if (now - lastMajor >= MAJOR_INTERVAL && process.memoryUsage().arrayBuffers > BUFFER_CEILING) {
      lastMajor = now;
      gc({ type: 'major' });
    }
  });
}
