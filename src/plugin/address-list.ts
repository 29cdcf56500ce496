/**
 * Address lists for plugins (badmailfrom, badrcptto, and whoever needs the
 * same syntax): `user@domain` exact, `@domain` anyone there, `/regex/flags`,
 * `<>` the null sender; each optionally followed by the reason given to the
 * client. Entries come from the config and from a file relative to the
 * config directory.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Address } from '../session/state';

export interface AddressEntry {
  /** The entry as written, for results and logs. */
  entry: string;
  reason?: string;
  test(a: Address): boolean;
}

export interface AddressList {
  readonly size: number;
  match(a: Address): AddressEntry | undefined;
}

const REGEX_LINE = /^\/((?:\\.|[^\\/])+)\/([a-z]*)(?:\s+(.*))?$/;

export function parseAddressEntry(line: string, where: string): AddressEntry {
  const text = line.trim();
  if (text.startsWith('/')) {
    const m = REGEX_LINE.exec(text);
    if (!m) throw new Error(`${where}: not a /regex/ entry: ${text}`);
    // g and y make RegExp.test stateful between calls.
    const flags = m[2].replace(/[gy]/g, '');
    let re: RegExp;
    try {
      re = new RegExp(m[1], flags);
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
    return { entry: `/${m[1]}/${flags}`, reason: m[3]?.trim() || undefined, test: (a) => a.address !== '' && re.test(a.address) };
  }
  const m = /^(\S+)(?:\s+(.*))?$/.exec(text)!;
  const entry = m[1];
  const reason = m[2]?.trim() || undefined;
  if (entry === '<>') return { entry, reason, test: (a) => a.address === '' };
  const bare = entry.replace(/^<(.*)>$/, '$1').toLowerCase();
  if (bare.startsWith('@')) {
    const domain = bare.slice(1).replace(/\.$/, '');
    if (!domain) throw new Error(`${where}: empty domain in ${entry}`);
    return { entry, reason, test: (a) => a.address !== '' && a.host.toLowerCase().replace(/\.$/, '') === domain };
  }
  return { entry, reason, test: (a) => a.address !== '' && a.address.toLowerCase() === bare };
}

/** Entries from an option list plus an optional file, in that order (first match wins). */
export async function loadAddressList(addresses: string[], file: string | undefined, configDir: string): Promise<AddressList> {
  const entries = addresses.map((a, i) => parseAddressEntry(a, `addresses[${i}]`));
  if (file) {
    const path = resolve(configDir, file);
    const lines = (await readFile(path, 'utf8')).split(/\r?\n/);
    lines.forEach((line, i) => {
      if (line.trim() && !line.trim().startsWith('#')) entries.push(parseAddressEntry(line, `${path}:${i + 1}`));
    });
  }
  return { size: entries.length, match: (a) => entries.find((e) => e.test(a)) };
}
