import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { hostname as osHostname } from 'node:os';
import YAML, { LineCounter, isMap, isSeq, type Document } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema';

/** A configuration problem, always naming the file and the key so an operator can find it. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: { key: string; line?: number; message: string }[],
  ) {
    super(problems.map((p) => `${file}${p.line ? `:${p.line}` : ''}: ${p.key || '(top level)'}: ${p.message}`).join('\n'));
    this.name = 'ConfigError';
  }
}

export interface PluginEntry {
  /** `name` or `name:instance` as written. */
  id: string;
  /** Module name (the part before ':'). */
  module: string;
  options: Record<string, unknown>;
  /** Config path of the options, for error messages (e.g. `plugins[2].dnsbl`). */
  key: string;
}

export interface LoadedConfig {
  file: string;
  dir: string;
  config: Config & { hostname: string };
  plugins: PluginEntry[];
  /** Finds the line of a config path, for errors raised later (plugin option validation). */
  lineOf(path: (string | number)[]): number | undefined;
}

export interface Overrides {
  listen?: string;
  downstream?: string;
}

export function keyOf(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '');
}

function lineFinder(doc: Document, counter: LineCounter) {
  return (path: (string | number)[]): number | undefined => {
    // Walk down as far as the path exists, so a missing key points at its parent.
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] } | undefined;
      if (node && typeof node === 'object' && node.range) return counter.linePos(node.range[0]).line;
    }
    return undefined;
  };
}

/** Turn zod issues into ConfigError problems with keys relative to `base`. */
export function zodProblems(
  error: z.ZodError,
  base: (string | number)[],
  lineOf: (p: (string | number)[]) => number | undefined,
): ConfigError['problems'] {
  return error.issues.map((issue) => {
    let path = [...base, ...(issue.path as (string | number)[])];
    if (issue.code === 'unrecognized_keys') path = [...path, ...(issue as { keys: string[] }).keys.slice(0, 1)];
    const message = issue.code === 'unrecognized_keys' ? `unknown key (${(issue as { keys: string[] }).keys.join(', ')})` : issue.message;
    return { key: keyOf(path), line: lineOf(path), message };
  });
}

function parsePluginEntries(list: unknown[], lineOf: LoadedConfig['lineOf']): { entries: PluginEntry[]; problems: ConfigError['problems'] } {
  const entries: PluginEntry[] = [];
  const problems: ConfigError['problems'] = [];
  const seen = new Set<string>();
  list.forEach((item, i) => {
    let id: string;
    let options: unknown = {};
    if (typeof item === 'string') {
      id = item;
    } else if (item && typeof item === 'object' && !Array.isArray(item) && Object.keys(item).length === 1) {
      [id, options] = Object.entries(item)[0]!;
      options ??= {};
    } else {
      problems.push({ key: `plugins[${i}]`, line: lineOf(['plugins', i]), message: 'expected a plugin name or a one-key map `name: {options}`' });
      return;
    }
    const key = `plugins[${i}].${id}`;
    if (!/^[a-z0-9_][a-z0-9_\-/]*(:[A-Za-z0-9_.-]+)?$/i.test(id)) {
      problems.push({ key, line: lineOf(['plugins', i]), message: `bad plugin name "${id}" (expected name or name:instance)` });
      return;
    }
    if (typeof options !== 'object' || Array.isArray(options)) {
      problems.push({ key, line: lineOf(['plugins', i, id]), message: 'plugin options must be a map' });
      return;
    }
    if (seen.has(id)) {
      problems.push({ key, line: lineOf(['plugins', i]), message: `plugin "${id}" is listed twice; use ${id}:second for another instance` });
      return;
    }
    seen.add(id);
    entries.push({ id, module: id.split(':')[0]!, options: options as Record<string, unknown>, key });
  });
  return { entries, problems };
}

export function parseConfig(text: string, file: string, overrides: Overrides = {}): LoadedConfig {
  const counter = new LineCounter();
  const doc = YAML.parseDocument(text, { lineCounter: counter, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => ({ key: 'YAML', line: e.linePos?.[0]?.line, message: e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '') })),
    );
  }
  const lineOf = lineFinder(doc, counter);
  const raw = doc.contents === null ? {} : doc.toJS();
  if (!isMap(doc.contents) && doc.contents !== null) {
    throw new ConfigError(file, [{ key: '', line: 1, message: 'the file must hold a YAML map of settings' }]);
  }
  if (overrides.listen !== undefined) raw.listen = overrides.listen;
  if (overrides.downstream !== undefined) {
    raw.downstream = { ...(raw.downstream ?? {}), address: overrides.downstream };
  }
  const parsed = configSchema.safeParse(raw);
  const problems: ConfigError['problems'] = [];
  if (!parsed.success) problems.push(...zodProblems(parsed.error, [], lineOf));
  const pluginList = isSeq(doc.get('plugins', true)) || raw.plugins === undefined ? (raw.plugins ?? []) : null;
  if (pluginList === null) problems.push({ key: 'plugins', line: lineOf(['plugins']), message: 'expected a list' });
  const { entries, problems: pluginProblems } = parsePluginEntries(pluginList ?? [], lineOf);
  problems.push(...pluginProblems);
  if (problems.length || !parsed.success) throw new ConfigError(file, problems);
  const config = { ...parsed.data, hostname: parsed.data.hostname ?? osHostname() };
  return { file, dir: dirname(resolve(file)), config, plugins: entries, lineOf };
}

export function loadConfigFile(file: string, overrides: Overrides = {}): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [{ key: '', message: `cannot read: ${(err as Error).message}` }]);
  }
  return parseConfig(text, file, overrides);
}
