/**
 * A configuration file a plugin reads at start and again whenever it changes
 * (inode, size or mtime differ), without a restart. The first read must
 * succeed (the plugin fails to start otherwise, as a config error); a later
 * version that cannot be read or parsed is logged once and the previous one
 * stays in force, so a half-edited file never empties a list.
 */
import { readFile, stat } from 'node:fs/promises';
import type { PluginLogger } from '../plugin/api';

export type FileParser<T> = (text: string, path: string) => T;

async function stampOf(path: string): Promise<string> {
  const st = await stat(path);
  return `${st.ino}:${st.size}:${st.mtimeMs}`;
}

export class ReloadingFile<T> {
  private checkedAt = Date.now();
  private checking: Promise<void> | undefined;
  /** The stamp of the version last refused, so its error is logged only once. */
  private refused: string | undefined;

  private constructor(
    readonly path: string,
    private value: T,
    private stamp: string,
    private readonly parse: FileParser<T>,
    private readonly log: PluginLogger,
    private readonly intervalMs: number,
  ) {}

  /** Reads and parses the file now; throws (with the parser's file:line messages) if it cannot. */
  static async open<T>(path: string, parse: FileParser<T>, log: PluginLogger, intervalMs: number): Promise<ReloadingFile<T>> {
    const stamp = await stampOf(path);
    const value = parse(await readFile(path, 'utf8'), path);
    return new ReloadingFile(path, value, stamp, parse, log, intervalMs);
  }

  /** The current version, after looking for a change if the last look is `intervalMs` old. */
  async current(): Promise<T> {
    if (Date.now() - this.checkedAt >= this.intervalMs) {
      this.checking ??= this.refresh().finally(() => {
        this.checking = undefined;
      });
      await this.checking;
    }
    return this.value;
  }

  private async refresh(): Promise<void> {
    this.checkedAt = Date.now();
    let stamp = 'unreadable';
    try {
      stamp = await stampOf(this.path);
      if (stamp === this.stamp) {
        this.refused = undefined;
        return;
      }
      const value = this.parse(await readFile(this.path, 'utf8'), this.path);
      this.value = value;
      this.stamp = stamp;
      this.refused = undefined;
      this.log.info(`reloaded ${this.path}`);
    } catch (err) {
      if (this.refused === stamp) return;
      this.refused = stamp;
      this.log.error(`${(err as Error).message}; keeping the previous version of ${this.path}`);
    }
  }
}
