import { randomBytes } from 'node:crypto';

/** Unique across restarts and workers without a random draw per connection: a random prefix per process, then a counter. */
const ID_PREFIX = randomBytes(4).toString('hex');
let idCounter = 0;
export function newConnectionId(): string {
  return `${ID_PREFIX}${(idCounter++).toString(36).padStart(4, '0')}`;
}
