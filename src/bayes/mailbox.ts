import { createReadStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

/**
 * Messages from the places a mail admin keeps training mail: a maildir
 * (cur/ and new/), a directory of .eml files, an mbox file, or one message
 * file. mbox is read line by line, so a large archive is never in memory.
 */
export async function* readMessages(path: string): AsyncGenerator<{ source: string; data: Buffer }> {
  const st = await fs.stat(path);
  if (st.isDirectory()) {
    const entries = await fs.readdir(path, { withFileTypes: true });
    const names = new Set(entries.filter((e) => e.isDirectory()).map((e) => e.name));
    const isMaildir = names.has('cur') && names.has('new');
    const dirs = isMaildir ? [join(path, 'cur'), join(path, 'new')] : [path];
    for (const dir of dirs) {
      for (const e of (await fs.readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
        if (!e.isFile() || e.name.startsWith('.')) continue;
        yield* readMessages(join(dir, e.name));
      }
    }
    return;
  }
  const fh = await fs.open(path, 'r');
  const head = Buffer.alloc(5);
  await fh.read(head, 0, 5, 0);
  await fh.close();
  if (head.toString('latin1') !== 'From ') {
    yield { source: path, data: await fs.readFile(path) };
    return;
  }
  yield* readMbox(path);
}

/** mboxrd/mboxo: messages start at "From " lines; ">From " quoting is undone one level. */
async function* readMbox(path: string): AsyncGenerator<{ source: string; data: Buffer }> {
  const lines = createInterface({ input: createReadStream(path, { encoding: 'latin1' }), crlfDelay: Infinity });
  let current: string[] | undefined;
  let n = 0;
  const flush = () => {
    if (!current) return undefined;
    // The empty line before the next "From " belongs to the mbox, not the message.
    if (current.length && current[current.length - 1] === '') current.pop();
    return { source: `${path}#${++n}`, data: Buffer.from(current.join('\r\n') + '\r\n', 'latin1') };
  };
  for await (const line of lines) {
    if (line.startsWith('From ')) {
      const msg = flush();
      if (msg) yield msg;
      current = [];
      continue;
    }
    current?.push(/^>+From /.test(line) ? line.slice(1) : line);
  }
  const last = flush();
  if (last) yield last;
}
