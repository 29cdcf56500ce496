import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { SaslExchange, decodeResponse, type SaslStep } from '../../src/auth/sasl';
import { cramMd5Context, cramMd5Digest, cramMd5Matches, cramMd5MatchesContext, md5 } from '../../src/auth/cram-md5';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const done = (s: SaslStep) => {
  assert.equal(s.kind, 'done', JSON.stringify(s));
  return (s as Extract<SaslStep, { kind: 'done' }>).request;
};
const errorCode = (s: SaslStep): number => {
  assert.equal(s.kind, 'error', JSON.stringify(s));
  return (s as Extract<SaslStep, { kind: 'error' }>).reply.code;
};

test('decodeResponse: base64 of UTF-8, "=" is empty, anything else is refused', () => {
  assert.equal(decodeResponse(b64('Grüße')), 'Grüße');
  assert.equal(decodeResponse('='), '');
  assert.equal(decodeResponse('not base64!'), undefined);
  assert.equal(decodeResponse('abc'), undefined, 'unpadded');
  assert.equal(decodeResponse(Buffer.from([0xff, 0xfe]).toString('base64')), undefined, 'not UTF-8');
});

test('PLAIN with an initial response, and with a challenge first', () => {
  const { first } = SaslExchange.start('PLAIN', b64('\0alice\0s3cret'), 'mx.example.test');
  assert.deepEqual(done(first), { mechanism: 'PLAIN', user: 'alice', password: 's3cret' });

  const { exchange, first: ask } = SaslExchange.start('PLAIN', undefined, 'mx.example.test');
  assert.deepEqual(ask, { kind: 'challenge', text: '' });
  assert.deepEqual(done(exchange.next(b64('boss\0alice\0pw'))), { mechanism: 'PLAIN', user: 'alice', password: 'pw', authzid: 'boss' });
});

test('PLAIN refuses the wrong number of fields, control characters and an empty user', () => {
  assert.equal(errorCode(SaslExchange.start('PLAIN', b64('alice\0pw'), 'h').first), 501);
  assert.equal(errorCode(SaslExchange.start('PLAIN', b64('\0al\nice\0pw'), 'h').first), 501);
  assert.equal(errorCode(SaslExchange.start('PLAIN', b64('\0\0pw'), 'h').first), 501);
  assert.equal(errorCode(SaslExchange.start('PLAIN', b64('\0a\0b\0c'), 'h').first), 501, 'a NUL in the password is a fourth field');
});

test('LOGIN asks for the user, then the password; "*" cancels', () => {
  const { exchange, first } = SaslExchange.start('LOGIN', undefined, 'h');
  assert.deepEqual(first, { kind: 'challenge', text: b64('Username:') });
  assert.deepEqual(exchange.next(b64('alice')), { kind: 'challenge', text: b64('Password:') });
  assert.deepEqual(done(exchange.next(b64('pw'))), { mechanism: 'LOGIN', user: 'alice', password: 'pw' });
  assert.equal(errorCode(exchange.next(b64('again'))), 503, 'the exchange is over');

  const c = SaslExchange.start('LOGIN', b64('alice'), 'h');
  assert.deepEqual(c.first, { kind: 'challenge', text: b64('Password:') });
  assert.equal(errorCode(c.exchange.next('*')), 501);
});

test('CRAM-MD5: a unique challenge naming the host, user and hex digest back, checked against the secret', () => {
  const { exchange, first } = SaslExchange.start('CRAM-MD5', undefined, 'mx.example.test');
  assert.equal(first.kind, 'challenge');
  const challenge = Buffer.from((first as { text: string }).text, 'base64').toString();
  assert.match(challenge, /^<[0-9a-f]{24}\.\d+@mx\.example\.test>$/);
  const other = Buffer.from((SaslExchange.start('CRAM-MD5', undefined, 'mx.example.test').first as { text: string }).text, 'base64').toString();
  assert.notEqual(challenge, other);
  const digest = cramMd5Digest('tanstaaftanstaaf', challenge);
  const req = done(exchange.next(b64(`tim ${digest.toUpperCase()}`)));
  assert.equal(req.user, 'tim');
  assert.equal(req.challenge, challenge);
  assert.ok(cramMd5Matches('tanstaaftanstaaf', req.challenge!, req.response!));
  assert.ok(!cramMd5Matches('wrong', req.challenge!, req.response!));
  assert.equal(errorCode(SaslExchange.start('CRAM-MD5', 'x', 'h').first), 501, 'no initial response');
  const bad = SaslExchange.start('CRAM-MD5', undefined, 'h');
  assert.equal(errorCode(bad.exchange.next(b64('tim nothex'))), 501);
});

test('CRAM-MD5: RFC 2195\'s example, with the cleartext secret and with a Dovecot {CRAM-MD5} context', () => {
  const challenge = '<1896.697170952@postoffice.reston.mci.net>';
  assert.equal(cramMd5Digest('tanstaaftanstaaf', challenge), 'b913a602c7eda7a495b4e6e7334d3890');
  const context = cramMd5Context('tanstaaftanstaaf');
  assert.ok(cramMd5MatchesContext(context, challenge, 'b913a602c7eda7a495b4e6e7334d3890'));
  assert.ok(!cramMd5MatchesContext(context, challenge, 'b913a602c7eda7a495b4e6e7334d3891'));
  // A secret longer than the HMAC block is hashed first (RFC 2104).
  const long = 'x'.repeat(100);
  assert.ok(cramMd5MatchesContext(cramMd5Context(long), challenge, cramMd5Digest(long, challenge)));
  assert.ok(!cramMd5MatchesContext('zz', challenge, cramMd5Digest(long, challenge)));
});

test('the hand-written MD5 agrees with node:crypto at every padding boundary', () => {
  for (const n of [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000]) {
    const data = Buffer.alloc(n, n % 251);
    assert.equal(md5(data).toString('hex'), createHash('md5').update(data).digest('hex'), `length ${n}`);
  }
});
