import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto, { randomBytes } from 'node:crypto';
import { simpleParser } from 'mailparser';
import plugin from '../../plugins/addsig';
import { Decision } from '../../src/plugin/decision';
import { spoolBuffer } from '../../src/message/spool';
import type { SpooledMessage } from '../../src/message/message';
import { addr, callHook, configDir, loadPlugin, makeContext, type FakeContextOptions } from '../helpers/plugin-context';

const FOOTER = 'ACME Corp, 1 Example Street\nhttps://acme.example';
const UTF8_FOOTER = 'Grüße aus Köln — ACME GmbH';
const crlf = (lines: string[]) => lines.join('\r\n');

async function run(
  raw: string | Buffer,
  options: object = { signatures: { 'acme.example': { text: FOOTER } } },
  ctxOpts: FakeContextOptions = {},
  edit?: (m: SpooledMessage) => void,
) {
  const hooks = await loadPlugin(plugin, options);
  const message = await spoolBuffer(Buffer.isBuffer(raw) ? raw : Buffer.from(raw), { memoryThreshold: 4096 });
  edit?.(message);
  const ctx = makeContext({ relayClient: true, sender: 'joe@acme.example', recipients: ['x@example.net'], ...ctxOpts });
  const verdict = await callHook(hooks, 'data_post', ctx, message);
  const out = Buffer.concat(await message.stream().toArray());
  await message.dispose();
  const parsed = await simpleParser(out);
  return { verdict, out, parsed, results: ctx.myResults()! };
}

/** Header block and body of a raw message. */
function split(raw: Buffer): { head: string; body: Buffer } {
  const i = raw.indexOf('\r\n\r\n');
  return { head: raw.subarray(0, i + 2).toString('latin1'), body: raw.subarray(i + 4) };
}

/** The raw parts of a multipart body: what lies between the delimiter lines (their CRLFs excluded). */
function parts(body: Buffer, boundary: string): Buffer[] {
  const text = body.toString('latin1');
  const open = `--${boundary}\r\n`;
  const first = text.startsWith(open) ? 0 : text.indexOf('\r\n' + open) + 2;
  const close = text.indexOf(`\r\n--${boundary}--\r\n`);
  assert.ok(first >= 0 && close > first, 'delimiters');
  assert.equal(text.slice(close + boundary.length + 8), '', 'nothing after the close delimiter');
  return text
    .slice(first + open.length, close)
    .split(`\r\n--${boundary}\r\n`)
    .map((p) => Buffer.from(p, 'latin1'));
}

function boundaryOf(head: string): string {
  const m = /^Content-Type: multipart\/mixed; boundary="([^"]+)"\r$/im.exec(head);
  assert.ok(m, 'top-level multipart/mixed');
  return m[1];
}

const plain7bit = crlf([
  'From: Joe <joe@acme.example>',
  'To: x@example.net',
  'Subject: plain',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  'Content-Transfer-Encoding: 7bit',
  '',
  'Hello there,',
  'see you.',
  '',
]);

test('addsig: plain 7bit text gets "-- " and the footer appended', async () => {
  const { verdict, out, parsed, results } = await run(plain7bit);
  assert.equal(verdict.decision, Decision.DECLINED);
  assert.ok(out.toString().endsWith('Hello there,\r\nsee you.\r\n\r\n-- \r\nACME Corp, 1 Example Street\r\nhttps://acme.example\r\n'));
  assert.equal(parsed.text, 'Hello there,\nsee you.\n\n-- \nACME Corp, 1 Example Street\nhttps://acme.example\n');
  assert.deepEqual(results.pass, ['appended']);
  assert.equal(results.details.domain, 'acme.example');
});

test('addsig: a message without MIME headers is text/plain and is appended to; a missing final CRLF is added', async () => {
  const { out, results } = await run(crlf(['From: joe@acme.example', 'Subject: old style', '', 'no newline at the end']));
  assert.ok(out.toString().endsWith('\r\n\r\nno newline at the end\r\n\r\n-- \r\nACME Corp, 1 Example Street\r\nhttps://acme.example\r\n'));
  assert.deepEqual(results.pass, ['appended']);
});

test('addsig: quoted-printable text gets a QP-encoded footer', async () => {
  const raw = crlf([
    'From: joe@acme.example',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset="UTF-8"',
    'Content-Transfer-Encoding: quoted-printable',
    '',
    'Caf=C3=A9 au lait, a very long line that the sender soft-broke for us, fine =',
    'and it goes on.',
    '',
  ]);
  const { out, parsed, results } = await run(raw, { signatures: { 'acme.example': { text: UTF8_FOOTER } } });
  const { body } = split(out);
  assert.ok(body.toString().includes('\r\n--=20\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln =E2=80=94 ACME GmbH\r\n'));
  assert.ok(/^[\x20-\x7e\r\n]*$/.test(body.toString('latin1')), 'body stays 7-bit');
  assert.equal(parsed.text, `Café au lait, a very long line that the sender soft-broke for us, fine and it goes on.\n\n-- \n${UTF8_FOOTER}\n`);
  assert.deepEqual(results.pass, ['appended (quoted-printable)']);
});

test('addsig: base64 text is wrapped in multipart/mixed, the original part kept byte for byte', async () => {
  const text = 'Base64 encoded text, ünïcödé.\r\n';
  const encoded = Buffer.from(text).toString('base64').replace(/.{76}/g, '$&\r\n') + '\r\n';
  const raw = crlf([
    'From: joe@acme.example',
    'Subject: b64',
    'Content-Type: text/plain;',
    '\tcharset=utf-8',
    'Content-Transfer-Encoding: base64',
    '',
    '',
  ]) + encoded;
  const { out, parsed, results } = await run(raw);
  const { head, body } = split(out);
  assert.match(head, /^MIME-Version: 1\.0\r$/m, 'MIME-Version added');
  assert.doesNotMatch(head, /Content-Transfer-Encoding/i);
  assert.doesNotMatch(head, /charset=utf-8/);
  const boundary = boundaryOf(head);
  assert.ok(!Buffer.from(raw).includes(boundary));
  const [original, footer] = parts(body, boundary);
  assert.equal(original.toString(), 'Content-Type: text/plain;\r\n\tcharset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded);
  assert.equal(footer.toString(), 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\nContent-Disposition: inline\r\n\r\nACME Corp, 1 Example Street\r\nhttps://acme.example\r\n');
  assert.ok(parsed.text?.startsWith('Base64 encoded text, ünïcödé.\n'));
  assert.ok(parsed.text?.includes('ACME Corp, 1 Example Street\nhttps://acme.example'));
  assert.deepEqual(results.pass, ['wrapped']);
  assert.equal(results.details.why, 'base64 encoding');
});

test('addsig: multipart/alternative is wrapped whole', async () => {
  const inner = crlf([
    '--alt-1',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'plain version',
    '--alt-1',
    'Content-Type: text/html; charset=us-ascii',
    '',
    '<p>html version</p>',
    '--alt-1--',
    '',
  ]);
  const raw = crlf(['From: joe@acme.example', 'MIME-Version: 1.0', 'Content-Type: multipart/alternative; boundary="alt-1"', '', '']) + inner;
  const { out, parsed, results } = await run(raw);
  const { head, body } = split(out);
  assert.equal(head.match(/MIME-Version/g)?.length, 1);
  const [original, footer] = parts(body, boundaryOf(head));
  assert.equal(original.toString(), 'Content-Type: multipart/alternative; boundary="alt-1"\r\n\r\n' + inner);
  assert.match(footer.toString(), /\r\n\r\nACME Corp, 1 Example Street\r\n/);
  assert.ok(parsed.html && parsed.html.includes('<p>html version</p>'));
  assert.ok(parsed.text?.includes('plain version'));
  assert.ok(parsed.text?.includes('https://acme.example'));
  assert.equal(results.details.why, 'multipart/alternative');
});

test('addsig: multipart/mixed with an attachment keeps the attachment bytes', async () => {
  const attachment = randomBytes(3000);
  const raw = crlf([
    'From: joe@acme.example',
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="mix"',
    'Content-Language: en',
    '',
    'preamble',
    '--mix',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'Here is the file, voilà.',
    '--mix',
    'Content-Type: application/octet-stream; name="data.bin"',
    'Content-Disposition: attachment; filename="data.bin"',
    'Content-Transfer-Encoding: base64',
    '',
    attachment.toString('base64').replace(/.{76}/g, '$&\r\n'),
    '--mix--',
    '',
  ]);
  const { out, parsed } = await run(raw, { signatures: { 'acme.example': { text: UTF8_FOOTER } } });
  const { head, body } = split(out);
  const [original, footer] = parts(body, boundaryOf(head));
  assert.equal(original.toString(), 'Content-Type: multipart/mixed; boundary="mix"\r\nContent-Language: en\r\n\r\n' + split(Buffer.from(raw)).body.toString());
  // the original has 8-bit content (not declared at the top), so the new top level says 8bit and the footer can be 8bit
  assert.match(head, /^Content-Transfer-Encoding: 8bit\r$/m);
  assert.match(footer.toString(), /Content-Transfer-Encoding: 8bit\r\n/);
  assert.equal(parsed.attachments.length, 1);
  assert.equal(parsed.attachments[0].filename, 'data.bin');
  assert.ok(parsed.attachments[0].content.equals(attachment));
  assert.ok(parsed.text?.includes('Here is the file, voilà.'));
  assert.ok(parsed.text?.includes(UTF8_FOOTER));
});

test('addsig: multipart/signed is wrapped, never touched inside', async () => {
  const signed = crlf([
    '--sig',
    'Content-Type: text/plain',
    '',
    'signed text',
    '--sig',
    'Content-Type: application/pgp-signature',
    '',
    '-----BEGIN PGP SIGNATURE-----',
    'iQEz',
    '-----END PGP SIGNATURE-----',
    '--sig--',
    '',
  ]);
  const ct = 'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol="application/pgp-signature"; boundary="sig"';
  const raw = crlf(['From: joe@acme.example', 'MIME-Version: 1.0', ct, '', '']) + signed;
  const { out, results } = await run(raw);
  const { head, body } = split(out);
  const [original] = parts(body, boundaryOf(head));
  assert.equal(original.toString(), ct + '\r\n\r\n' + signed);
  assert.equal(results.details.why, 'multipart/signed');
});

test('addsig: HTML and text attachments are wrapped, not appended to', async () => {
  const html = await run(crlf(['From: joe@acme.example', 'Content-Type: text/html', '', '<p>hi</p>', '']));
  assert.equal(html.results.details.why, 'text/html');
  assert.ok(String(html.parsed.html).startsWith('<p>hi</p>\n'));
  assert.ok(String(html.parsed.html).includes('ACME Corp, 1 Example Street'));
  const file = await run(crlf(['From: joe@acme.example', 'Content-Type: text/plain', 'Content-Disposition: attachment; filename="notes.txt"', '', 'file content', '']));
  assert.equal(file.results.details.why, 'text attachment');
  assert.equal(file.parsed.attachments[0].content.toString(), 'file content\r\n');
});

test('addsig: a non-ASCII footer on 7bit text is wrapped; 8bit only if the client declared BODY=8BITMIME', async () => {
  const opts = { signatures: { 'acme.example': { text: UTF8_FOOTER } } };
  const qp = await run(plain7bit, opts);
  assert.equal(qp.results.details.why, 'non-ASCII footer in us-ascii');
  assert.match(split(qp.out).head, /^MIME-Version: 1\.0\r$/m);
  assert.doesNotMatch(split(qp.out).head, /Content-Transfer-Encoding/);
  assert.match(qp.out.toString(), /Content-Transfer-Encoding: quoted-printable\r\nContent-Disposition: inline\r\n\r\nGr=C3=BC=C3=9Fe/);
  assert.ok(qp.parsed.text?.includes(UTF8_FOOTER));
  assert.ok(/^[\x00-\x7f]*$/.test(qp.out.toString('latin1')), 'still a 7-bit message');

  const eight = await run(plain7bit, opts, { sender: addr('joe@acme.example', { BODY: '8BITMIME' }) });
  assert.match(split(eight.out).head, /^Content-Transfer-Encoding: 8bit\r$/m);
  assert.ok(eight.out.toString().includes(`Content-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n\r\n${UTF8_FOOTER}\r\n`));
  assert.ok(eight.parsed.text?.includes(UTF8_FOOTER));
});

test('addsig: 8bit utf-8 text takes a non-ASCII footer as it is', async () => {
  const raw = crlf(['From: joe@acme.example', 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', 'Bonjour à tous', '']);
  const { out, parsed, results } = await run(raw, { signatures: { 'acme.example': { text: UTF8_FOOTER } } });
  assert.ok(out.toString().endsWith(`Bonjour à tous\r\n\r\n-- \r\n${UTF8_FOOTER}\r\n`));
  assert.equal(parsed.text, `Bonjour à tous\n\n-- \n${UTF8_FOOTER}\n`);
  assert.deepEqual(results.pass, ['appended']);
});

test('addsig: only relay clients by default', async () => {
  const { out, results } = await run(plain7bit, undefined, { relayClient: false });
  assert.equal(out.toString(), plain7bit);
  assert.deepEqual(results.skip, ['not a relay client']);
  const all = await run(plain7bit, { relay_only: false, signatures: { 'acme.example': { text: FOOTER } } }, { relayClient: false });
  assert.deepEqual(all.results.pass, ['appended']);
  assert.equal(plugin.defaults?.immune, false);
});

test('addsig: footer per domain, the default for others, nothing without either', async () => {
  const opts = { signatures: { 'ACME.example': { text: 'acme footer' }, 'other.example': { text: 'other footer' } }, default: { text: 'default footer' } };
  assert.ok((await run(plain7bit, opts)).out.toString().endsWith('-- \r\nacme footer\r\n'));
  assert.ok((await run(plain7bit, opts, { sender: 'a@Other.Example' })).out.toString().endsWith('-- \r\nother footer\r\n'));
  assert.ok((await run(plain7bit, opts, { sender: 'a@third.example' })).out.toString().endsWith('-- \r\ndefault footer\r\n'));
  const none = await run(plain7bit, undefined, { sender: 'a@third.example' });
  assert.equal(none.out.toString(), plain7bit);
  assert.deepEqual(none.results.skip, ['no footer for third.example']);
});

test('addsig: match: from uses the From header domain', async () => {
  const opts = { match: 'from', signatures: { 'acme.example': { text: 'from footer' } } };
  assert.ok((await run(plain7bit, opts, { sender: 'bounces@mailer.example' })).out.toString().endsWith('-- \r\nfrom footer\r\n'));
  const other = crlf(['From: "Acme, really" <joe@elsewhere.example>', '', 'x', '']);
  const { results } = await run(other, opts, { sender: 'joe@acme.example' });
  assert.deepEqual(results.skip, ['no footer for elsewhere.example']);
});

test('addsig: footer from a file relative to the config dir', async () => {
  const dir = configDir({ 'footer.txt': 'From a file\nline two\n\n' });
  const hooks = await loadPlugin(plugin, { signatures: { 'acme.example': { file: 'footer.txt' } } }, { configDir: dir });
  const message = await spoolBuffer(Buffer.from(plain7bit));
  await callHook(hooks, 'data_post', makeContext({ relayClient: true, sender: 'joe@acme.example' }), message);
  const out = Buffer.concat(await message.stream().toArray()).toString();
  await message.dispose();
  assert.ok(out.endsWith('see you.\r\n\r\n-- \r\nFrom a file\r\nline two\r\n'));
});

test('addsig: bounces and reports are left alone', async () => {
  const bounce = await run(plain7bit, undefined, { sender: '' });
  assert.equal(bounce.out.toString(), plain7bit);
  assert.deepEqual(bounce.results.skip, ['null sender']);
  const report = crlf(['From: joe@acme.example', 'Content-Type: multipart/report; report-type=disposition-notification; boundary="r"', '', '--r', '', 'read', '--r--', '']);
  const mdn = await run(report);
  assert.equal(mdn.out.toString(), report);
  assert.deepEqual(mdn.results.skip, ['multipart/report']);
});

test('addsig: bad footers are config errors', async () => {
  await assert.rejects(loadPlugin(plugin, { default: { text: ' \n ' } }), /empty footer/);
  await assert.rejects(loadPlugin(plugin, { default: { text: 'x'.repeat(1000) } }), /over 900 bytes/);
  await assert.rejects(loadPlugin(plugin, { default: { text: 'a\x00b' } }), /control characters/);
  assert.throws(() => plugin.options!.parse({ default: { text: 'a', file: 'b' } }));
  assert.throws(() => plugin.options!.parse({ match: 'header' }));
  assert.throws(() => plugin.options!.parse({ footer: 'x' }));
});

test('addsig: a big, file-spooled attachment survives wrapping intact', async () => {
  const attachment = randomBytes(300_000);
  const raw = crlf([
    'From: joe@acme.example',
    'MIME-Version: 1.0',
    'Content-Type: application/pdf; name="big.pdf"',
    'Content-Disposition: attachment; filename="big.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    attachment.toString('base64').replace(/.{76}/g, '$&\r\n'),
  ]);
  const { parsed, results } = await run(raw);
  assert.equal(results.details.why, 'application/pdf');
  assert.equal(parsed.attachments.length, 1);
  assert.equal(parsed.attachments[0].filename, 'big.pdf');
  assert.ok(parsed.attachments[0].content.equals(attachment));
  assert.equal(parsed.text, 'ACME Corp, 1 Example Street\nhttps://acme.example\n');
});

test('addsig: a change an earlier plugin made to the body is kept when wrapping', async () => {
  const raw = crlf(['From: joe@acme.example', 'Content-Type: text/html; charset=us-ascii', '', '<p>original</p>', '']);
  const { out, parsed } = await run(raw, undefined, {}, (m) => m.prependBody('<p>[EXTERNAL]</p>\r\n'));
  const [original] = parts(split(out).body, boundaryOf(split(out).head));
  assert.equal(original.toString(), 'Content-Type: text/html; charset=us-ascii\r\n\r\n<p>[EXTERNAL]</p>\r\n<p>original</p>\r\n');
  assert.ok(String(parsed.html).startsWith('<p>[EXTERNAL]</p>\n<p>original</p>'));
});

test('addsig: a message without a body gets one with the footer', async () => {
  const { out, parsed, results } = await run(crlf(['From: joe@acme.example', 'Subject: empty', '']));
  assert.equal(out.toString(), 'From: joe@acme.example\r\nSubject: empty\r\n\r\n\r\n-- \r\nACME Corp, 1 Example Street\r\nhttps://acme.example\r\n');
  assert.equal(parsed.subject, 'empty');
  assert.deepEqual(results.pass, ['appended']);
});

test('addsig: the boundary never occurs in the message', async () => {
  const planted = Buffer.alloc(18, 7);
  const taken = `=_prequeue_${planted.toString('base64url')}`;
  const raw = crlf(['From: joe@acme.example', 'Content-Type: text/html', '', `<p>--${taken}</p>`, '']);
  const real = crypto.randomBytes;
  let calls = 0;
  (crypto as { randomBytes: unknown }).randomBytes = (n: number) => (calls++ === 0 ? planted : real(n));
  try {
    const { out } = await run(raw);
    const boundary = boundaryOf(split(out).head);
    assert.equal(calls, 2, 'a second boundary was drawn');
    assert.notEqual(boundary, taken);
    assert.ok(out.toString().includes(`<p>--${taken}</p>`));
  } finally {
    (crypto as { randomBytes: unknown }).randomBytes = real;
  }
});
