/**
 * Geography for the geoip plugin: great-circle distance, continent of a
 * country, and whether an address is one a location database can know at all.
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

export interface LatLon {
  latitude: number;
  longitude: number;
}

/** Mean Earth radius (IUGG), the usual choice for the haversine formula. */
const EARTH_RADIUS_KM = 6371.0088;

/** Great-circle distance in km (haversine: accurate to about 0.5 %, far below what IP geolocation is). */
export function distanceKm(a: LatLon, b: LatLon): number {
  const rad = Math.PI / 180;
  const dLat = (b.latitude - a.latitude) * rad;
  const dLon = (b.longitude - a.longitude) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.latitude * rad) * Math.cos(b.latitude * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Continent codes as MaxMind and GeoNames use them. */
export const CONTINENTS = ['AF', 'AN', 'AS', 'EU', 'NA', 'OC', 'SA'] as const;
export type Continent = (typeof CONTINENTS)[number];

/**
 * GeoNames' continent of every ISO 3166-1 country (and XK, Kosovo), which is
 * what MaxMind's databases carry; databases that only give a country code
 * (ip-location-db's) get their continent from here. Transcontinental states go
 * where GeoNames puts them: RU and CY in EU; TR, GE, AM, AZ and KZ in AS; EG
 * in AF; TL in OC.
 */
const BY_CONTINENT: Record<Continent, string> = {
  AF: 'AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW',
  AN: 'AQ BV GS HM TF',
  AS: 'AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TM TR TW UZ VN YE',
  EU: 'AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK',
  NA: 'AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV SX TC TT US VC VG VI',
  OC: 'AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TL TO TV UM VU WF WS',
  SA: 'AR BO BR CL CO EC FK GF GY PE PY SR UY VE',
};

const CONTINENT_OF = new Map<string, Continent>();
for (const [continent, list] of Object.entries(BY_CONTINENT) as [Continent, string][]) {
  for (const cc of list.split(' ')) CONTINENT_OF.set(cc, continent);
}

/** The continent of an ISO 3166-1 alpha-2 code (any case); undefined for codes it does not know. */
export function continentOf(country: string): Continent | undefined {
  return CONTINENT_OF.get(country.toUpperCase());
}

/** Every country code continentOf knows. */
export function knownCountries(): string[] {
  return [...CONTINENT_OF.keys()];
}

/**
 * IANA special-purpose ranges (RFC 6890 and successors): private, loopback,
 * link-local, shared (CGNAT), documentation, benchmarking, multicast,
 * reserved. No location database places them, and a client there is local.
 */
const SPECIAL = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  SPECIAL.addSubnet(net, bits, 'ipv4');
}
for (const [net, bits] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 23],
  ['2001:db8::', 32],
  ['3fff::', 20],
  ['5f00::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  SPECIAL.addSubnet(net, bits, 'ipv6');
}

/** The address in the form a database is searched with: IPv4-mapped IPv6 (dual-stack listeners) as plain IPv4. */
export function plainAddress(addr: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  return m ? m[1]! : addr;
}

/** True for a valid global unicast address; false for special-purpose ranges and for anything that is not an IP. */
export function isPublicAddress(addr: string): boolean {
  const ip = plainAddress(addr);
  if (isIPv4(ip)) return !SPECIAL.check(ip, 'ipv4');
  if (isIPv6(ip)) return !SPECIAL.check(ip, 'ipv6');
  return false;
}
