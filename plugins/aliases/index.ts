/**
 * aliases — recipients checked against an aliases file (qpsmtpd's aliases
 * format, by Peter J. Holzer): unknown users refused at RCPT, aliases
 * rewritten to their targets, per-recipient options for other plugins.
 *
 *   # local parts @ domains: targets (options)
 *   hjp,peter.holzer@wsr.ac.at,wifo.at: hjp@asherah.wsr.ac.at (denysoft_greylist, spamassassin_reject_threshold=10)
 *   postmaster,abuse@: hjp@wsr.ac.at          # any domain, and <postmaster>
 *   *@lists.example.com: listmaster@example.com
 *   office@example.com: anna@example.com, bob@example.com
 *   anna,bob@example.com: anna@mail.example.com, bob@mail.example.com
 *
 * The full syntax is in parse.ts, lookup order and expansion in table.ts.
 *
 * Options:
 *   file: string             the aliases file, relative to the config dir (default 'aliases')
 *   rewrite: boolean         true (default): the downstream gets RCPT TO the final target(s)
 *                            instead of the recipient; false: only validate, the recipient is
 *                            relayed as the client gave it (the downstream aliases it itself)
 *   detail_separator: string characters that start a detail in a local part ('+'; '' for none):
 *                            hjp+lists@ matches hjp@, and the targets keep "+lists"
 *   max_depth: integer       longest alias chain (default 10)
 *   check_interval: number   seconds between looks at the file for changes (default 2)
 *
 * A recipient in a domain the file names (in any pattern) that matches no
 * entry is refused with 550 5.1.1 "no such user" at RCPT: never accepted and
 * bounced, never sent downstream. Recipients in other domains get no opinion
 * (DECLINED), and a found one DECLINED too, so the checks after this plugin
 * still run; rcpt_ok or the downstream accept it.
 *
 * With rewrite, one RCPT may become several downstream RCPTs: the client gets
 * 250 when the downstream accepted at least one target (a refused one is
 * logged), the downstream's reply otherwise. Each carries the client's
 * parameters (NOTIFY...) and, when the downstream offers DSN, an ORCPT naming
 * the recipient the client gave, unless the client sent its own.
 *
 * The options in parentheses go to `Address.options` of that recipient (keys in
 * lower case, a bare flag is `true`): greylisting reads `denysoft_greylist`,
 * spamassassin `spamassassin_reject_threshold`. They come from the entry the
 * recipient matched itself, not from those its targets match.
 *
 * The file is re-read when it changes (no reload needed). A syntax error, a
 * duplicate pattern or an alias loop stops the start with file:line; in a
 * changed file it is logged and the previous version stays in force. A loop
 * only a catch-all can reach is found as mail arrives and answered 450 4.4.6.
 *
 * Not immune by default: who may send does not change who exists here. Place
 * it among the first rcpt plugins (after the whitelist), before those reading
 * per-recipient options and before rcpt_ok.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import { definePlugin } from '../../src/plugin/api';
import { deny, denysoft } from '../../src/plugin/decision';
import { ReloadingFile } from '../../src/util/reloading-file';
import { parseAliases } from './parse';
import { AliasTable } from './table';

export default definePlugin({
  description: 'refuse unknown recipients of the aliased domains, rewrite aliases to their targets, set per-recipient options',
  options: z
    .object({
      file: z.string().min(1).default('aliases'),
      rewrite: z.boolean().default(true),
      detail_separator: z.string().max(8).default('+'),
      max_depth: z.number().int().min(1).max(100).default(10),
      check_interval: z.number().min(0).default(2),
    })
    .strict(),
  defaults: { immune: false },
  async create(opts, env) {
    const build = (text: string, path: string): AliasTable => {
      const table = new AliasTable(parseAliases(text, path), { detailSeparators: opts.detail_separator, maxDepth: opts.max_depth });
      table.check();
      return table;
    };
    const file = await ReloadingFile.open(resolve(env.configDir, opts.file), build, env.log, opts.check_interval * 1000);
    if ((await file.current()).size === 0) env.log.warn(`${file.path} has no entries: no recipient is checked`);

    return {
      async rcpt(ctx, rcpt) {
        const r = (await file.current()).resolve(rcpt.address);
        switch (r.kind) {
          case 'foreign':
            ctx.result({ skip: `${rcpt.address}: not an aliased domain` });
            return;
          case 'unknown':
            ctx.result({ fail: `${rcpt.address}: no such user` });
            return deny('no such user', '5.1.1');
          case 'error':
            ctx.log.error(`${r.where}: ${r.message}`);
            ctx.result({ err: `${rcpt.address}: ${r.message}` });
            return denysoft('Mail loop in local alias expansion, try again later', '4.4.6');
          case 'found': {
            if (r.options) rcpt.options = { ...rcpt.options, ...r.options };
            const unchanged = r.targets.length === 1 && r.targets[0]!.toLowerCase() === rcpt.address.toLowerCase();
            if (opts.rewrite && !unchanged) rcpt.forwardTo = r.targets;
            ctx.result({
              pass: `${rcpt.address}${unchanged ? '' : ` -> ${r.targets.join(',')}`}`,
              ...(r.options ? { options: r.options } : {}),
            });
            return;
          }
        }
      },
    };
  },
});
