/**
 * Where a content scanner listens: a TCP address (`127.0.0.1:783`,
 * `[::1]:3310`, `scanner.example.org:783`) or a UNIX socket (`/run/clamav/clamd.ctl`,
 * or `unix:/path` to make it explicit).
 */
import { isIP } from 'node:net';

export type ScanTarget = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** Parses a scanner address; `defaultPort` applies to a bare host. Throws on nonsense. */
export function parseTarget(spec: string, defaultPort: number): ScanTarget {
  const s = spec.trim();
  if (s.startsWith('unix:')) return unixTarget(s.slice(5));
  if (s.startsWith('/')) return unixTarget(s);
  let host: string;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (bracket) {
    [, host, portText] = bracket;
  } else if (isIP(s) === 6) {
    host = s;
  } else {
    const colon = s.lastIndexOf(':');
    if (colon >= 0) [host, portText] = [s.slice(0, colon), s.slice(colon + 1)];
    else host = s;
  }
  if (!host || /[\s/]/.test(host)) throw new Error(`invalid scanner address ${JSON.stringify(spec)}: expected host:port or a socket path`);
  const port = portText === undefined ? defaultPort : Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535 || (portText !== undefined && !/^\d+$/.test(portText))) {
    throw new Error(`invalid port in scanner address ${JSON.stringify(spec)}`);
  }
  return { kind: 'tcp', host, port };
}

function unixTarget(path: string): ScanTarget {
  if (!path.startsWith('/')) throw new Error(`scanner socket path must be absolute: ${JSON.stringify(path)}`);
  return { kind: 'unix', path };
}

export function describeTarget(t: ScanTarget): string {
  if (t.kind === 'unix') return t.path;
  return t.host.includes(':') ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}
