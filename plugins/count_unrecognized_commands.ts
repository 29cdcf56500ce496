/**
 * count_unrecognized_commands — disconnect clients that keep sending commands
 * we do not know (qpsmtpd's plugin of the same name).
 *
 * Options:
 *   max: integer   unrecognized commands allowed per connection; the max-th one disconnects (default 4)
 *
 * Below the limit it has no opinion, so the client gets the usual 500. List it
 * after plugins that implement extra verbs in unrecognized_command, or their
 * commands count too. Keeps its count in the connection's notes.
 */
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { denyDisconnect } from '../src/plugin/decision';

export default definePlugin({
  description: 'disconnect after too many unrecognized commands',
  // Counting protects the server; relay clients get no exemption from it.
  defaults: { immune: false },
  options: z.object({ max: z.number().int().min(1).default(4) }).strict(),
  create(opts) {
    return {
      unrecognized_command(ctx, verb) {
        const count = ((ctx.conn.notes[ctx.name] as number | undefined) ?? 0) + 1;
        ctx.conn.notes[ctx.name] = count;
        ctx.log.info(`unrecognized command '${verb}' (${count}/${opts.max})`);
        if (count < opts.max) {
          ctx.result({ msg: verb, count });
          return;
        }
        ctx.result({ fail: `${count} unrecognized commands`, count });
        return denyDisconnect(`Closing connection, ${count} unrecognized commands. Perhaps you should read RFC 5321?`);
      },
    };
  },
});
