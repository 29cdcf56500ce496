/**
 * A bounded map whose entries expire. Map keeps insertion order, so the
 * oldest entry is the first key: dropping it is O(1) and good enough for DNS,
 * where a hot name is re-inserted whenever its TTL runs out anyway.
 */
export class TtlCache<V> {
  private readonly entries = new Map<string, { value: V; expires: number }>();

  constructor(private readonly max: number) {}

  get(key: string): V | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.expires <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e.value;
  }

  /** Milliseconds left for a key (0 if absent or expired). */
  remaining(key: string): number {
    const e = this.entries.get(key);
    return e ? Math.max(0, e.expires - Date.now()) : 0;
  }

  set(key: string, value: V, ttlMs: number): void {
    if (this.max <= 0 || ttlMs <= 0) return;
    this.entries.delete(key);
    while (this.entries.size >= this.max) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    this.entries.set(key, { value, expires: Date.now() + ttlMs });
  }

  get size(): number {
    return this.entries.size;
  }

  clear(): void {
    this.entries.clear();
  }
}
