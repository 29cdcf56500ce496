/** An SMTP reply as prequeue sends it to the client or reads it from the downstream. */
export interface Reply {
  code: number;
  /** RFC 3463 enhanced status code, e.g. "2.1.0"; absent when not known. */
  enhanced?: string;
  /** One string per reply line, without code or enhanced code. */
  lines: string[];
  /** For the responders: close the connection after sending this reply. */
  disconnect?: boolean;
}

const ENHANCED_RE = /^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)/;

export function reply(code: number, enhanced: string | undefined, text: string | string[], disconnect = false): Reply {
  const lines = (Array.isArray(text) ? text : [text]).flatMap((l) => l.split(/\r?\n/));
  return { code, enhanced, lines: lines.length ? lines : [''], ...(disconnect ? { disconnect } : {}) };
}

/** Control characters would let a reply text (often built from client input) split the reply. */
const CONTROL = /[\x00-\x1f\x7f]/g;

/** Wire form: `250-2.1.0 first line\r\n250 2.1.0 last line\r\n`. */
export function formatReply(r: Reply, withEnhanced = true): string {
  const enh = withEnhanced && r.enhanced ? r.enhanced + ' ' : '';
  return r.lines
    .map((line, i) => `${r.code}${i < r.lines.length - 1 ? '-' : ' '}${enh}${line.replace(CONTROL, ' ')}`.trimEnd())
    .join('\r\n') + '\r\n';
}

/**
 * Parse the lines of one (possibly multi-line) reply read from a server.
 * The enhanced code is split off when every line carries the same one.
 */
export function parseReplyLines(raw: string[]): Reply {
  const code = Number(raw[0]?.slice(0, 3));
  const texts = raw.map((l) => l.slice(4));
  let enhanced: string | undefined;
  const m = ENHANCED_RE.exec(texts[0] ?? '');
  if (m && m[1] === String(code)[0] && texts.every((t) => t.startsWith(m[0].trimEnd()))) {
    enhanced = m[0].trim();
  }
  const lines = enhanced ? texts.map((t) => t.slice(enhanced!.length).replace(/^\s/, '')) : texts;
  return { code, enhanced, lines };
}

export const isPositive = (r: Reply): boolean => r.code >= 200 && r.code < 400;
export const isTempFail = (r: Reply): boolean => r.code >= 400 && r.code < 500;
export const isPermFail = (r: Reply): boolean => r.code >= 500;

export function replyText(r: Reply): string {
  return `${r.code}${r.enhanced ? ' ' + r.enhanced : ''} ${r.lines.join(' / ')}`;
}
