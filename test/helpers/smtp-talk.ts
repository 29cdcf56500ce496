/**
 * A raw SMTP client for tests: sends exactly the bytes a test wants (bare LF,
 * NUL, pipelined commands, half a line) and reads replies as they come.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { parseReplyLines, type Reply } from '../../src/smtp/reply';

export class SmtpTalk {
  private buf = '';
  private lines: string[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<void>;
  isClosed = false;
  greeting!: Reply;

  /** Set by handshake(): from then on the dialogue goes through it. */
  tlsSocket: tls.TLSSocket | undefined;
  private readonly onData = (d: Buffer): void => {
    this.buf += d.toString('latin1');
    let i: number;
    while ((i = this.buf.indexOf('\r\n')) >= 0) {
      this.lines.push(this.buf.slice(0, i));
      this.buf = this.buf.slice(i + 2);
    }
    this.wake();
  };

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', this.onData);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.isClosed = true;
        this.wake();
        resolve();
      }),
    );
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  /** `localAddress`: the source address (127.0.0.x), for checks keyed on the client address. */
  static async connect(port: number, host = '127.0.0.1', readGreeting = true, localAddress?: string): Promise<SmtpTalk> {
    const socket = net.connect({ port, host, localAddress });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const t = new SmtpTalk(socket);
    if (readGreeting) t.greeting = await t.reply();
    return t;
  }

  /** The next complete reply; rejects if the connection closes first or after `timeoutMs`. */
  async reply(timeoutMs = 5000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.lines.findIndex((l) => l.length < 4 || l[3] !== '-');
      if (end >= 0) return parseReplyLines(this.lines.splice(0, end + 1));
      if (this.isClosed) throw new Error(`connection closed while waiting for a reply${this.lines.length ? ` (partial: ${this.lines.join(' | ')})` : ''}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a reply');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Lines received and not yet read as replies, complete or not, joined with '|'. */
  get unread(): string {
    return [...this.lines, this.buf].join('|');
  }

  write(data: string | Buffer): void {
    (this.tlsSocket ?? this.socket).write(data);
  }

  /** After the server's 220 to STARTTLS: the TLS handshake, verifying the server against the CA file `ca`. */
  async handshake(ca: string): Promise<tls.TLSSocket> {
    this.socket.removeListener('data', this.onData);
    const ts = tls.connect({ socket: this.socket, ca: readFileSync(ca), servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      ts.once('secureConnect', resolve);
      ts.once('error', reject);
    });
    ts.on('data', this.onData);
    ts.on('error', () => undefined);
    this.tlsSocket = ts;
    return ts;
  }

  /** STARTTLS (which must get 220) and the handshake. */
  async starttls(ca: string): Promise<tls.TLSSocket> {
    const r = await this.cmd('STARTTLS');
    if (r.code !== 220) throw new Error(`STARTTLS refused: ${r.code} ${r.lines.join(' ')}`);
    return this.handshake(ca);
  }

  /** Whether the server closed the connection within `ms`. */
  async closedWithin(ms = 3000): Promise<boolean> {
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, ms))]);
    return this.isClosed;
  }

  async cmd(line: string, timeoutMs?: number): Promise<Reply> {
    this.write(line + '\r\n');
    return this.reply(timeoutMs);
  }

  /** EHLO, MAIL, RCPTs, DATA and the message (dot-stuffed here); the end-of-data reply. */
  async send(from: string, to: string[], message: string | Buffer, helo = 'client.example.net'): Promise<{ mail: Reply; rcpt: Reply[]; data?: Reply; eod?: Reply }> {
    await this.cmd(`EHLO ${helo}`);
    const mail = await this.cmd(`MAIL FROM:<${from}>`);
    const rcpt: Reply[] = [];
    for (const r of to) rcpt.push(await this.cmd(`RCPT TO:<${r}>`));
    if (mail.code !== 250 || !rcpt.some((r) => r.code === 250)) return { mail, rcpt };
    const data = await this.cmd('DATA');
    if (data.code !== 354) return { mail, rcpt, data };
    const body = Buffer.isBuffer(message) ? message : Buffer.from(message, 'utf8');
    const stuffed = Buffer.from(body.toString('latin1').replace(/(^|\r\n)\./g, '$1..'), 'latin1');
    const tail = stuffed.subarray(-2).toString() === '\r\n' ? '' : '\r\n';
    this.write(Buffer.concat([stuffed, Buffer.from(tail + '.\r\n')]));
    return { mail, rcpt, data, eod: await this.reply(15000) };
  }

  async quit(): Promise<void> {
    if (!this.isClosed) {
      this.write('QUIT\r\n');
      await Promise.race([this.closed, new Promise((r) => setTimeout(r, 1000))]);
    }
    this.socket.destroy();
  }

  destroy(): void {
    this.tlsSocket?.destroy();
    this.socket.destroy();
  }
}
