import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMessages } from '../../src/bayes/mailbox';

async function collect(path: string): Promise<{ source: string; text: string }[]> {
  const out = [];
  for await (const m of readMessages(path)) out.push({ source: m.source, text: m.data.toString('latin1') });
  return out;
}

test('mailbox: an mbox is split at "From " lines and >From quoting is undone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pq-mbox-'));
  const file = join(dir, 'spam.mbox');
  writeFileSync(
    file,
    [
      'From a@example.test Sun Nov 22 10:00:00 2026',
      'Subject: one',
      '',
      '>From here on, quoted',
      '',
      'From b@example.test Sun Nov 22 10:01:00 2026',
      'Subject: two',
      '',
      'body two',
      '',
    ].join('\n'),
  );
  const msgs = await collect(file);
  assert.equal(msgs.length, 2);
  assert.equal(msgs[0]!.text, 'Subject: one\r\n\r\nFrom here on, quoted\r\n');
  assert.equal(msgs[1]!.text, 'Subject: two\r\n\r\nbody two\r\n');
  assert.equal(msgs[1]!.source, `${file}#2`);
});

test('mailbox: a maildir reads cur/ and new/ but not tmp/; a plain directory reads every file', async () => {
  const md = mkdtempSync(join(tmpdir(), 'pq-maildir-'));
  for (const d of ['cur', 'new', 'tmp']) mkdirSync(join(md, d));
  writeFileSync(join(md, 'cur', '1.eml'), 'Subject: cur\r\n\r\nx\r\n');
  writeFileSync(join(md, 'new', '2.eml'), 'Subject: new\r\n\r\ny\r\n');
  writeFileSync(join(md, 'tmp', '3.eml'), 'Subject: tmp\r\n\r\nz\r\n');
  assert.deepEqual(
    (await collect(md)).map((m) => m.text.split('\r\n')[0]),
    ['Subject: cur', 'Subject: new'],
  );
  const flat = mkdtempSync(join(tmpdir(), 'pq-eml-'));
  writeFileSync(join(flat, 'a.eml'), 'Subject: a\r\n\r\n');
  writeFileSync(join(flat, 'b.eml'), 'Subject: b\r\n\r\n');
  writeFileSync(join(flat, '.hidden'), 'Subject: hidden\r\n\r\n');
  assert.deepEqual(
    (await collect(flat)).map((m) => m.text.split('\r\n')[0]),
    ['Subject: a', 'Subject: b'],
  );
  assert.equal((await collect(join(flat, 'a.eml'))).length, 1);
});
