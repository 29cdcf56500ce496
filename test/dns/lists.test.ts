/**
 * The DNS list building blocks (return-code matching, lookups, templates) and
 * the domain helpers, against a real NSD.
 */
import { exemptRecipient } from '../../src/plugin/reject-at';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { DnsResolver } from '../../src/dns/resolver';
import {
  ListZone,
  cleanText,
  isPrivateAddress,
  listVerdict,
  policyLookup,
  renderMessage,
  summarize,
  templateSchema,
  zoneEntry,
  zoneFields,
} from '../../src/dns/lists';
import { addressDomain, asciiDomain, domainCandidates, hasKnownSuffix, headerAddressDomains, isMailDomain, registrableDomain } from '../../src/dns/domain';
import { Decision } from '../../src/plugin/decision';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { addr } from '../helpers/plugin-context';

const zoneSchema = zoneEntry(zoneFields(['zone', 'item', 'reason']));
const zone = (input: unknown) => new ListZone(zoneSchema.parse(input));

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'bl.test': [
      '2.2.0.192 IN A 127.0.0.2',
      '2.2.0.192 IN TXT "Listed: see https://bl.test/q?192.0.2.2"',
      '3.2.0.192 IN A 127.0.0.2',
      '3.2.0.192 IN A 127.0.0.4',
      'spam.example IN A 127.0.1.2',
      'spam.example IN TXT "part one, " "part two"',
      'evil IN A 127.0.0.2',
      'evil IN TXT "first\\013\\010550 5.7.1 injected"',
    ].join('\n'),
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

test('lists: a code list counts only its codes; other 127/8 answers are ignored', () => {
  const z = zone({ zone: 'bl.test', codes: ['127.0.0.2', '127.0.1.0/24'] });
  assert.deepEqual(z.classify(['127.0.0.2']), { codes: ['127.0.0.2'], ignored: [], reasons: [] });
  assert.deepEqual(z.classify(['127.0.1.77', '127.0.0.3']), { codes: ['127.0.1.77'], ignored: ['127.0.0.3'], reasons: [] });
  assert.deepEqual(z.classify(['127.0.0.4']).codes, []);
});

test('lists: a code map gives the reason of each code that matched', () => {
  const z = zone({ zone: 'zen.test', codes: { '127.0.0.2': 'listed in SBL', '127.0.0.4': 'listed in XBL', '127.0.0.10': '' } });
  const r = z.classify(['127.0.0.2', '127.0.0.4', '127.0.0.11']);
  assert.deepEqual(r.codes, ['127.0.0.2', '127.0.0.4']);
  assert.deepEqual(r.reasons, ['listed in SBL', 'listed in XBL']);
  assert.deepEqual(r.ignored, ['127.0.0.11']);
  // An empty reason still counts, it just gives no text.
  assert.deepEqual(z.classify(['127.0.0.10']), { codes: ['127.0.0.10'], ignored: [], reasons: [] });
});

test('lists: bitmask on the last octet, as a number or a map of bits', () => {
  const uribl = zone({ zone: 'multi.uribl.test', bitmask: { 2: 'black', 8: 'red' } });
  assert.deepEqual(uribl.classify(['127.0.0.2']).reasons, ['black']);
  assert.deepEqual(uribl.classify(['127.0.0.10']).reasons, ['black', 'red']);
  assert.deepEqual(uribl.classify(['127.0.0.14']).codes, ['127.0.0.14'], 'grey (4) is not asked for, black is set');
  assert.deepEqual(uribl.classify(['127.0.0.4']).codes, [], 'grey only');
  assert.deepEqual(uribl.classify(['127.0.0.1']).codes, [], 'URIBL refusal code');
  assert.deepEqual(uribl.classify(['10.0.0.2']).codes, [], 'bitmask only applies to 127.0.0.0/8');
  const surbl = zone({ zone: 'multi.surbl.test', bitmask: 0b11011000 });
  assert.deepEqual(surbl.classify(['127.0.0.8']).codes, ['127.0.0.8']);
  assert.deepEqual(surbl.classify(['127.0.0.4']).codes, []);
});

test('lists: without a map any 127/8 answer counts except refusal codes; any_answer counts everything', () => {
  const z = zone('bl.test');
  assert.deepEqual(z.classify(['127.0.0.2', '127.0.5.9']).codes, ['127.0.0.2', '127.0.5.9']);
  for (const refusal of ['127.0.0.1', '127.0.0.255', '127.0.1.255', '127.255.255.254', '203.0.113.5']) {
    assert.deepEqual(z.classify([refusal]).ignored, [refusal], refusal);
  }
  const any = zone({ zone: 'odd.test', any_answer: true });
  assert.deepEqual(any.classify(['203.0.113.5']).codes, ['203.0.113.5']);
});

test('lists: zone options are validated', () => {
  assert.equal(zoneSchema.parse('BL.Test.').zone, 'bl.test');
  assert.throws(() => zoneSchema.parse({ zone: 'bl.test', codes: ['127.0.0.256'] }), /IPv4/);
  assert.throws(() => zoneSchema.parse({ zone: 'bl.test', bitmask: { x: 'black' } }), /bit value/);
  assert.throws(() => zoneSchema.parse({ zone: 'bl.test', bitmask: { 256: 'black' } }), /between 1 and 255/);
  assert.throws(() => zoneSchema.parse({ zone: 'bl.test', colour: 'red' }), /colour/);
  assert.throws(() => zoneSchema.parse({ zone: 'nodot' }), /zone name/);
  assert.throws(() => zoneSchema.parse({ zone: 'bl.test', message: 'listed at {zoen}' }), /unknown placeholder \{zoen\}/);
  assert.throws(() => z.object({ m: templateSchema(['ip']) }).parse({ m: '{ip} {txt}' }), /\{txt\}/);
});

test('lists: a listed IP with its TXT reason, over a real NSD', async () => {
  const l = await zone('bl.test').lookup(resolver, '192.0.2.2', '2.2.0.192');
  assert.equal(l.name, '2.2.0.192.bl.test');
  assert.equal(l.status, 'ok');
  assert.equal(l.listed, true);
  assert.equal(l.failed, false);
  assert.deepEqual(l.codes, ['127.0.0.2']);
  assert.equal(l.txt, 'Listed: see https://bl.test/q?192.0.2.2');
  assert.equal(l.reason, l.txt, 'no mapped reason: the TXT is the reason');
});

test('lists: several answers, a mapped reason wins over TXT, and no TXT falls back to the codes', async () => {
  const mapped = await zone({ zone: 'bl.test', codes: { '127.0.0.2': 'spam source', '127.0.0.4': 'exploited' } }).lookup(resolver, '192.0.2.3', '3.2.0.192');
  assert.deepEqual([...mapped.codes].sort(), ['127.0.0.2', '127.0.0.4']);
  assert.deepEqual(mapped.reason!.split(', ').sort(), ['exploited', 'spam source']);
  const noTxt = await zone({ zone: 'bl.test', txt: false }).lookup(resolver, '192.0.2.3', '3.2.0.192');
  assert.equal(noTxt.txt, undefined);
  assert.match(noTxt.reason!, /^returned 127\.0\.0\.[24], 127\.0\.0\.[24]$/);
});

test('lists: domains are looked up as they are; multi-string TXT records are joined', async () => {
  const l = await zone('bl.test').lookup(resolver, 'spam.example', 'spam.example');
  assert.equal(l.listed, true);
  assert.equal(l.txt, 'part one, part two');
});

test('lists: NXDOMAIN is "not listed"; SERVFAIL and timeout are failures, never "not listed"', async () => {
  const nx = await zone('bl.test').lookup(resolver, '192.0.2.99', '99.2.0.192');
  assert.equal(nx.status, 'nxdomain');
  assert.equal(nx.listed, false);
  assert.equal(nx.failed, false);
  const sf = await zone('broken.test').lookup(resolver, '192.0.2.2', '2.2.0.192');
  assert.equal(sf.status, 'servfail');
  assert.equal(sf.failed, true);
  assert.equal(sf.listed, false);
  const silent = await silentDnsServer();
  const slow = new DnsResolver({ servers: [silent.server], timeout: 150, tries: 1 });
  try {
    const to = await zone('bl.test').lookup(slow, '192.0.2.2', '2.2.0.192');
    assert.equal(to.status, 'timeout');
    assert.equal(to.failed, true);
  } finally {
    slow.close();
    await silent.stop();
  }
});

test('lists: verdicts: listed denies, failures defer only under defer, else no opinion', async () => {
  const zones = [zone('bl.test'), zone({ zone: 'broken.test', on_lookup_error: 'defer' }), zone('other.test')];
  const listed = await zones[0]!.lookup(resolver, '192.0.2.2', '2.2.0.192');
  const failed = await zones[1]!.lookup(resolver, '192.0.2.2', '2.2.0.192');
  const policy = policyLookup(zones, 'skip');
  assert.equal(policy('broken.test'), 'defer');
  assert.equal(policy('other.test'), 'skip');
  const msg = (l: { zone: string }) => `in ${l.zone}`;
  const both = listVerdict(summarize([failed, listed], policy), msg);
  assert.equal(both.decision, Decision.DENY);
  assert.equal(both.message, 'in bl.test');
  assert.equal(both.enhanced, '5.7.1');
  const onlyFailed = listVerdict(summarize([failed], policy), msg);
  assert.equal(onlyFailed.decision, Decision.DENYSOFT);
  assert.match(onlyFailed.message!, /broken\.test/);
  assert.equal(listVerdict(summarize([failed], policyLookup([zone('broken.test')], 'skip')), msg).decision, Decision.DECLINED);
});

test('lists: reply texts from DNS data are one printable, bounded line', async () => {
  const evil = await zone('bl.test').lookup(resolver, 'evil', 'evil');
  assert.equal(evil.txt, 'first 550 5.7.1 injected', 'CR LF in a TXT record cannot start a new reply line');
  assert.equal(cleanText('a\r\n550 fake\x00line'), 'a 550 fake line');
  assert.equal(cleanText('x'.repeat(500)).length, 200);
  assert.equal(renderMessage('{item} in {zone}: {reason}{nothing}', { item: '192.0.2.2', zone: 'bl.test', reason: 'see\nhttp://x' }), '192.0.2.2 in bl.test: see http://x');
});

test('lists: private ranges and exempt recipients', () => {
  for (const a of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.1.1', '100.64.0.1', '::1', 'fd00::1', 'fe80::1', '::ffff:10.0.0.1']) {
    assert.equal(isPrivateAddress(a), true, a);
  }
  for (const a of ['192.0.2.1', '8.8.8.8', '2001:db8::1', '172.32.0.1']) assert.equal(isPrivateAddress(a), false, a);
  const exempt = exemptRecipient(['postmaster', 'Abuse', 'Boss@Example.test']);
  assert.equal(exempt(addr('postmaster')), true);
  assert.equal(exempt(addr('PostMaster@example.test')), true);
  assert.equal(exempt(addr('abuse@other.test')), true);
  assert.equal(exempt(addr('boss@example.TEST')), true);
  assert.equal(exempt(addr('boss@other.test')), false);
  assert.equal(exempt(addr('user@example.test')), false);
});

test('domain: registrable domains from the Public Suffix List', () => {
  assert.equal(registrableDomain('www.Example.co.uk.'), 'example.co.uk');
  assert.equal(registrableDomain('a.b.example.com'), 'example.com');
  assert.equal(registrableDomain('mail.spam.test'), 'spam.test', 'unknown suffix: the last label');
  assert.equal(registrableDomain('foo.github.io'), 'github.io');
  assert.equal(registrableDomain('foo.github.io', { privateDomains: true }), 'foo.github.io');
  assert.equal(registrableDomain('192.0.2.1'), undefined);
  assert.equal(registrableDomain('localhost'), undefined);
  assert.equal(registrableDomain('co.uk'), undefined);
  assert.equal(registrableDomain('bad_host!.com'), undefined);
  assert.deepEqual(domainCandidates('Mail.Spam.Example.co.uk', true), ['mail.spam.example.co.uk', 'example.co.uk']);
  assert.deepEqual(domainCandidates('spam.test', true), ['spam.test']);
  assert.deepEqual(domainCandidates('mail.spam.test', false), ['mail.spam.test']);
  assert.deepEqual(domainCandidates('[192.0.2.1]', true), []);
  assert.deepEqual(domainCandidates('localhost', true), []);
  assert.equal(hasKnownSuffix('cheap-pills.com'), true);
  assert.equal(hasKnownSuffix('file.txt'), false);
  assert.equal(hasKnownSuffix('spam.test'), false);
  assert.equal(addressDomain('User@Example.COM'), 'example.com');
  assert.equal(addressDomain('postmaster'), undefined);
  assert.deepEqual(headerAddressDomains('"John @ home" <j@Spam.test>, x@y.test, Team: a@b.test, c@Y.TEST;'), ['spam.test', 'y.test', 'b.test']);
  assert.deepEqual(headerAddressDomains('undisclosed-recipients:;'), []);
});

test('asciiDomain and isMailDomain: A-labels, no URL tricks, RFC 5321 syntax', () => {
  assert.equal(asciiDomain('Mail.Example.COM'), 'mail.example.com');
  assert.equal(asciiDomain('bücher.example'), 'xn--bcher-kva.example');
  assert.equal(asciiDomain('bücher.example/x'), '', 'a URL delimiter is never cut off');
  assert.equal(asciiDomain('good.example/x'), 'good.example/x', 'ASCII names pass unchanged, for the syntax check to refuse');
  assert.equal(isMailDomain('good.example/x'), false);
  assert.equal(isMailDomain('mail.example.com'), true);
  assert.equal(isMailDomain('localhost'), true, 'a single label is syntax; whether it will do is the caller\'s call');
  assert.equal(isMailDomain('under_score.example'), false);
  assert.equal(isMailDomain('-dash.example'), false);
  assert.equal(isMailDomain('192.0.2.1'), false, 'a numeric last label is an IP');
  assert.equal(isMailDomain(`${'a'.repeat(64)}.example`), false);
  assert.equal(isMailDomain(''), false);
});
