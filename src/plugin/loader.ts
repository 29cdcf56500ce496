import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError, zodProblems, type LoadedConfig, type PluginEntry } from '../config/load';
import type { Logger } from '../log';
import type { KvStore } from '../store/types';
import { HOOK_NAMES, type CommonOptions, type HookName, type PluginDefinition, type PluginEnv, type PluginHooks } from './api';

/** A configured, created plugin: what the chain runs. */
export interface PluginInstance {
  /** `name` or `name:instance`: the key for results, logs and deferred verdicts. */
  id: string;
  module: string;
  file: string;
  description: string;
  common: CommonOptions;
  hooks: PluginHooks;
  log: Logger;
}

const COMMON_KEYS = ['reject', 'reject_type', 'loglevel', 'immune', 'timeout', 'on_error'] as const;

const commonSchema = z
  .object({
    reject: z
      .union([z.boolean(), z.literal('defer'), z.literal('log')])
      .transform((v) => (v === 'log' ? false : v))
      .optional(),
    reject_type: z.enum(['temp', 'perm', 'disconnect', 'temp_disconnect']).optional(),
    loglevel: z.enum(['error', 'warn', 'info', 'debug']).optional(),
    immune: z.boolean().optional(),
    timeout: z.number().positive().max(300).optional(),
    on_error: z.enum(['defer', 'skip']).optional(),
  })
  .strict();

/** Where compiled built-in plugins live: dist/plugins next to dist/src. */
export const BUILTIN_PLUGIN_DIR = resolve(__dirname, '../../plugins');

export function pluginSearchPath(loaded: LoadedConfig): string[] {
  return [...loaded.config.plugin_dirs.map((d) => resolve(loaded.dir, d)), BUILTIN_PLUGIN_DIR];
}

function findModule(name: string, dirs: string[]): string | undefined {
  for (const dir of dirs) {
    for (const candidate of [join(dir, `${name}.js`), join(dir, name, 'index.js')]) {
      if (existsSync(candidate)) return candidate;
    }
  }
  return undefined;
}

/**
 * Loads a plugin module fresh: a SIGHUP reload must pick up changed plugin
 * code, so the module (not its dependencies) is dropped from require's cache.
 */
function requireFresh(file: string): unknown {
  delete require.cache[require.resolve(file)];
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file);
}

function isDefinition(x: unknown): x is PluginDefinition {
  return !!x && typeof x === 'object' && typeof (x as PluginDefinition).create === 'function';
}

/** What the runtime shares with every plugin it loads. */
export interface SharedServices extends Pick<PluginEnv, 'dns'> {
  /** The runtime's store, namespaced; each plugin's env.store() defaults the namespace to its instance name. */
  store(namespace: string): KvStore;
}

export async function loadPlugins(loaded: LoadedConfig, logger: Logger, shared: SharedServices): Promise<PluginInstance[]> {
  const dirs = pluginSearchPath(loaded);
  const problems: ConfigError['problems'] = [];
  const prepared: { entry: PluginEntry; def: PluginDefinition; file: string; common: CommonOptions; options: unknown }[] = [];
  const entryPath = (entry: PluginEntry): (string | number)[] => {
    const m = /^plugins\[(\d+)\]/.exec(entry.key)!;
    return ['plugins', Number(m[1]), entry.id];
  };

  for (const entry of loaded.plugins) {
    const base = entryPath(entry);
    const file = findModule(entry.module, dirs);
    if (!file) {
      problems.push({ key: entry.key, line: loaded.lineOf(base), message: `no plugin "${entry.module}" in ${dirs.join(', ')}` });
      continue;
    }
    let def: unknown;
    try {
      const mod = requireFresh(file) as { default?: unknown };
      def = mod.default ?? mod;
    } catch (err) {
      problems.push({ key: entry.key, line: loaded.lineOf(base), message: `cannot load ${file}: ${(err as Error).message}` });
      continue;
    }
    if (!isDefinition(def)) {
      problems.push({ key: entry.key, line: loaded.lineOf(base), message: `${file} does not export a plugin definition (definePlugin)` });
      continue;
    }
    const commonRaw: Record<string, unknown> = {};
    const ownRaw: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(entry.options)) {
      ((COMMON_KEYS as readonly string[]).includes(k) ? commonRaw : ownRaw)[k] = v;
    }
    const c = commonSchema.safeParse(commonRaw);
    if (!c.success) problems.push(...zodProblems(c.error, base, loaded.lineOf));
    const own = (def.options ?? z.object({}).strict()).safeParse(ownRaw);
    if (!own.success) problems.push(...zodProblems(own.error, base, loaded.lineOf));
    if (!c.success || !own.success) continue;
    const common: CommonOptions = {
      reject: true,
      immune: true,
      timeout: loaded.config.plugin_timeout,
      on_error: 'defer',
      ...def.defaults,
      ...(Object.fromEntries(Object.entries(c.data).filter(([, v]) => v !== undefined)) as Partial<CommonOptions>),
    };
    prepared.push({ entry, def, file, common, options: own.data });
  }
  if (problems.length) throw new ConfigError(loaded.file, problems);

  const instances: PluginInstance[] = [];
  try {
    for (const { entry, def, file, common, options } of prepared) {
      const log = logger.child({ plugin: entry.id }, common.loglevel);
      let hooks: PluginHooks;
      try {
        hooks = await def.create(options as never, {
          name: entry.id,
          configDir: loaded.dir,
          mode: loaded.config.mode,
          hostname: loaded.config.hostname,
          log,
          ...shared,
          store: (namespace = entry.id) => shared.store(namespace),
        });
      } catch (err) {
        throw new ConfigError(loaded.file, [
          { key: entry.key, line: loaded.lineOf(entryPath(entry)), message: `plugin failed to start: ${(err as Error).message}` },
        ]);
      }
      const unknown = Object.keys(hooks).filter((k) => k !== 'shutdown' && !(HOOK_NAMES as readonly string[]).includes(k));
      if (unknown.length) {
        throw new ConfigError(loaded.file, [
          { key: entry.key, line: loaded.lineOf(entryPath(entry)), message: `plugin registers unknown hooks: ${unknown.join(', ')}` },
        ]);
      }
      instances.push({ id: entry.id, module: entry.module, file, description: def.description, common, hooks, log });
    }
  } catch (err) {
    await Promise.allSettled(instances.map((i) => i.hooks.shutdown?.()));
    throw err;
  }
  return instances;
}

export function hooksOf(instance: PluginInstance): HookName[] {
  return HOOK_NAMES.filter((h) => typeof instance.hooks[h] === 'function');
}
