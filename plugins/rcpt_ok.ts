/**
 * rcpt_ok — accept recipients in our own domains, refuse to relay elsewhere.
 *
 * Options:
 *   domains: string[]      domains we accept mail for (default [])
 *   domains_file: string   more domains, one a line, '#' comments; relative to the config dir
 *   subdomains: boolean    also accept any sub-domain of a listed domain (default false)
 *
 * A listed domain gives OK, which ends the rcpt chain: list rcpt_ok after the
 * other rcpt checks. Other recipients are denied ("relaying denied") unless the
 * client is a relay client (DECLINED: the downstream decides). With neither
 * option set the plugin has no opinion at all. `<postmaster>` is always OK.
 * Needs nothing but the envelope. Not immune by default: it handles relay
 * clients itself.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { deny, ok } from '../src/plugin/decision';

export default definePlugin({
  description: 'accept recipients in our domains, deny relaying for other clients',
  options: z
    .object({
      domains: z.array(z.string().min(1)).default([]),
      domains_file: z.string().min(1).optional(),
      subdomains: z.boolean().default(false),
    })
    .strict(),
  defaults: { immune: false },
  async create(opts, env) {
    const list = [...opts.domains];
    if (opts.domains_file) {
      const text = await readFile(resolve(env.configDir, opts.domains_file), 'utf8');
      for (const line of text.split(/\r?\n/)) {
        const d = line.replace(/#.*/, '').trim();
        if (d) list.push(d);
      }
    }
    const configured = opts.domains.length > 0 || opts.domains_file !== undefined;
    if (configured && list.length === 0) env.log.warn('no domains configured: every recipient is relaying');
    const domains = new Set(list.map((d) => d.toLowerCase().replace(/\.$/, '')));

    const isLocal = (host: string): boolean => {
      if (domains.has(host)) return true;
      if (!opts.subdomains) return false;
      for (let i = host.indexOf('.'); i >= 0; i = host.indexOf('.', i + 1)) {
        if (domains.has(host.slice(i + 1))) return true;
      }
      return false;
    };

    return {
      rcpt(ctx, rcpt) {
        // RFC 5321 4.5.1: <postmaster> must be accepted whatever the domain list says.
        if (!rcpt.host && rcpt.user.toLowerCase() === 'postmaster') {
          ctx.result({ pass: 'postmaster' });
          return ok();
        }
        if (!configured) {
          ctx.result({ skip: 'no domains configured' });
          return;
        }
        const host = rcpt.host.toLowerCase().replace(/\.$/, '');
        if (host && isLocal(host)) {
          ctx.result({ pass: host });
          return ok();
        }
        if (ctx.conn.relayClient) {
          ctx.result({ skip: 'relay client' });
          return;
        }
        ctx.result({ fail: host || 'no domain' });
        return deny('relaying denied', '5.7.1');
      },
    };
  },
});
