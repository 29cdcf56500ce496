import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildProxyCommands, decodeXtext, encodeXtext, postfixAddress } from '../../src/backend/xtext';

const ALL_XFORWARD = ['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'IDENT', 'SOURCE'];
const ALL_XCLIENT = ['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'LOGIN', 'DESTADDR', 'DESTPORT'];

describe('xtext', () => {
  it('leaves printable ASCII other than + and = alone', () => {
    assert.equal(encodeXtext('mail.example.com'), 'mail.example.com');
    assert.equal(encodeXtext('[UNAVAILABLE]'), '[UNAVAILABLE]');
    assert.equal(encodeXtext('!~<>@'), '!~<>@');
  });

  it('encodes +, =, space, control characters and DEL as +XX with upper-case hex', () => {
    assert.equal(encodeXtext('a+b'), 'a+2Bb');
    assert.equal(encodeXtext('a=b'), 'a+3Db');
    assert.equal(encodeXtext('a b'), 'a+20b');
    assert.equal(encodeXtext('\r\n\t\x00\x7f'), '+0D+0A+09+00+7F');
  });

  it('encodes non-ASCII as its UTF-8 octets', () => {
    assert.equal(encodeXtext('é'), '+C3+A9');
    assert.equal(encodeXtext('😀'), '+F0+9F+98+80');
  });

  it('round-trips every byte value and mixed strings', () => {
    let all = '';
    for (let c = 0; c < 0x80; c++) all += String.fromCharCode(c);
    for (const s of [all, 'héllo wörld+=', '😀 a=b+c', '', '+', '=']) {
      const enc = encodeXtext(s);
      assert.match(enc, /^[!-~]*$/, 'encoded form is printable ASCII without spaces');
      assert.doesNotMatch(enc.replace(/\+[0-9A-F]{2}/g, ''), /[+=]/, 'no bare + or = left');
      assert.equal(decodeXtext(enc), s);
    }
  });

  it('decodes leniently: lower-case hex, and a + without two hex digits stays literal', () => {
    assert.equal(decodeXtext('a+2bb'), 'a+b');
    assert.equal(decodeXtext('a+zz'), 'a+zz');
    assert.equal(decodeXtext('end+'), 'end+');
    assert.equal(decodeXtext('end+4'), 'end+4');
  });
});

describe('postfixAddress', () => {
  it('prefixes IPv6, strips brackets, unmaps v4-mapped addresses and keeps the special values', () => {
    assert.equal(postfixAddress('192.0.2.1'), '192.0.2.1');
    assert.equal(postfixAddress('2001:db8::1'), 'IPV6:2001:db8::1');
    assert.equal(postfixAddress('[2001:db8::1]'), 'IPV6:2001:db8::1');
    assert.equal(postfixAddress('IPv6:2001:db8::1'), 'IPV6:2001:db8::1');
    assert.equal(postfixAddress('::ffff:127.0.0.1'), '127.0.0.1');
    assert.equal(postfixAddress('[UNAVAILABLE]'), '[UNAVAILABLE]');
    assert.equal(postfixAddress('[tempunavail]'), '[tempunavail]');
  });
});

describe('buildProxyCommands', () => {
  it('builds one XFORWARD line in the given order, like Postfix does', () => {
    const lines = buildProxyCommands(
      'XFORWARD',
      {
        NAME: '[UNAVAILABLE]',
        ADDR: '127.0.0.1',
        PORT: '48700',
        HELO: 'client.example.net',
        IDENT: '[UNAVAILABLE]',
        PROTO: 'ESMTP',
        SOURCE: 'LOCAL',
      },
      ALL_XFORWARD,
    );
    assert.deepEqual(lines, [
      'XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=48700 HELO=client.example.net IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=LOCAL',
    ]);
  });

  it('sends only advertised attributes (any case), skips undefined values, sends empty as [UNAVAILABLE]', () => {
    const lines = buildProxyCommands(
      'XFORWARD',
      { name: 'host.example', ADDR: '192.0.2.7', PORT: '25', HELO: '', IDENT: 'Q1', SOURCE: undefined, PROTO: 'ESMTP' },
      ['name', 'Addr', 'PROTO', 'HELO', 'SOURCE'],
    );
    assert.deepEqual(lines, ['XFORWARD NAME=host.example ADDR=192.0.2.7 HELO=[UNAVAILABLE] PROTO=ESMTP']);
  });

  it('returns nothing when no attribute is advertised or given', () => {
    assert.deepEqual(buildProxyCommands('XFORWARD', { NAME: 'x' }, []), []);
    assert.deepEqual(buildProxyCommands('XFORWARD', { NAME: undefined }, ALL_XFORWARD), []);
  });

  it('xtext-encodes values and gives IPv6 addresses the IPV6: prefix', () => {
    const [line] = buildProxyCommands('XFORWARD', { ADDR: '2001:db8::25', HELO: 'bad helo=x+y' }, ALL_XFORWARD);
    assert.equal(line, 'XFORWARD ADDR=IPV6:2001:db8::25 HELO=bad+20helo+3Dx+2By');
    const [xc] = buildProxyCommands('XCLIENT', { ADDR: '::1', DESTADDR: '[::2]' }, ALL_XCLIENT);
    assert.equal(xc, 'XCLIENT DESTADDR=IPV6:::2 ADDR=IPV6:::1');
  });

  it('splits into several lines, each under 512 characters with CRLF, when NAME and HELO are long', () => {
    const longName = 'a'.repeat(63) + '.' + 'b'.repeat(63) + '.' + 'c'.repeat(63) + '.' + 'd'.repeat(61); // 253
    const longHelo = 'h'.repeat(250);
    const attrs = {
      NAME: longName,
      ADDR: '2001:db8:1234:5678:9abc:def0:1234:5678',
      PORT: '65535',
      HELO: longHelo,
      IDENT: 'ABCDEF0123',
      PROTO: 'ESMTP',
      SOURCE: 'REMOTE',
    };
    const lines = buildProxyCommands('XFORWARD', attrs, ALL_XFORWARD);
    assert.ok(lines.length >= 2, `expected a split, got ${lines.length} line(s)`);
    for (const l of lines) {
      assert.ok(l.length + 2 <= 512, `line of ${l.length} chars`);
      assert.match(l, /^XFORWARD( [A-Z]+=\S+)+$/);
    }
    // Every attribute arrives exactly once and intact.
    const sent = new Map(lines.flatMap((l) => l.split(' ').slice(1)).map((kv) => kv.split('=') as [string, string]));
    assert.equal(sent.size, 7);
    assert.equal(sent.get('NAME'), longName);
    assert.equal(sent.get('HELO'), longHelo);
    assert.equal(sent.get('ADDR'), 'IPV6:2001:db8:1234:5678:9abc:def0:1234:5678');
  });

  it('respects a smaller maxLen', () => {
    const lines = buildProxyCommands('XFORWARD', { NAME: 'n'.repeat(30), HELO: 'h'.repeat(30), PROTO: 'ESMTP' }, ALL_XFORWARD, 60);
    assert.deepEqual(lines, ['XFORWARD NAME=' + 'n'.repeat(30), 'XFORWARD HELO=' + 'h'.repeat(30) + ' PROTO=ESMTP']);
    for (const l of lines) assert.ok(l.length + 2 <= 60);
  });

  it('cuts values to 255 characters and shortens an attribute that cannot fit alone without breaking an escape', () => {
    const [a] = buildProxyCommands('XFORWARD', { HELO: 'x'.repeat(400) }, ALL_XFORWARD);
    assert.equal(a, 'XFORWARD HELO=' + 'x'.repeat(255));
    // 255 spaces would be 765 encoded characters: the value must be shortened to fit one line.
    const [b] = buildProxyCommands('XFORWARD', { HELO: ' '.repeat(300) }, ALL_XFORWARD);
    assert.ok(b.length + 2 <= 512);
    assert.match(b, /^XFORWARD HELO=(\+20)+$/);
  });

  it('puts NAME and ADDR in the last XCLIENT command, filling it first', () => {
    const lines = buildProxyCommands(
      'XCLIENT',
      { ADDR: '192.0.2.1', NAME: 'n'.repeat(200), HELO: 'h'.repeat(250), PROTO: 'ESMTP', LOGIN: 'l'.repeat(200) },
      ALL_XCLIENT,
    );
    assert.ok(lines.length >= 2);
    for (const l of lines) assert.ok(l.length + 2 <= 512);
    const last = lines[lines.length - 1];
    assert.match(last, / NAME=n+ ADDR=192\.0\.2\.1$/);
    for (const l of lines.slice(0, -1)) assert.doesNotMatch(l, /NAME=|ADDR=/);
  });
});
