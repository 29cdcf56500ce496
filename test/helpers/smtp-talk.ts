/**
 * A raw SMTP client for tests: sends exactly the bytes a test wants (bare LF,
 * NUL, pipelined commands, half a line) and reads replies as they come.
 */
import net from 'node:net';
import { parseReplyLines, type Reply } from '../../src/smtp/reply';

export class SmtpTalk {
  private buf = '';
  private lines: string[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<void>;
  isClosed = false;
  greeting!: Reply;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d) => {
      this.buf += d.toString('latin1');
      let i: number;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 2);
      }
      this.wake();
    });
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

  static async connect(port: number, host = '127.0.0.1', readGreeting = true): Promise<SmtpTalk> {
    const socket = net.connect(port, host);
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

  write(data: string | Buffer): void {
    this.socket.write(data);
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
    this.socket.destroy();
  }
}
