/** Test messages and how to compare them with what Postfix's virtual(8) stored. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

/** A message that catches every way a relay can alter bytes. */
export const TRICKY_LINES = [
  'From: Sender <sender@example.net>',
  'To: alice@example.test',
  'Subject: byte-exact check',
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  'Message-ID: <byte-exact@example.net>',
  'X-Folded: first part',
  '\tcontinued with a tab',
  '  and with spaces',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=iso-8859-1',
  'Content-Transfer-Encoding: 8bit',
  '',
  '.leading dot',
  '..two leading dots',
  '.',
  'trailing spaces   ',
  'tab\tinside',
  '8-bit: äöüß €',
  '.' + 'x'.repeat(989),
  'last line',
];
export const TRICKY = TRICKY_LINES.join('\r\n') + '\r\n';

/** What virtual(8) stored, minus the header lines Postfix itself prepended (Return-Path, Delivered-To, Received). */
export function deliveredContent(file: string): Buffer {
  const bytes = readFileSync(file);
  const start = bytes.indexOf('From: Sender <sender@example.net>\n');
  assert.ok(start > 0, `message not found in ${file}:\n${bytes.subarray(0, 500).toString()}`);
  return bytes.subarray(start);
}

/** virtual(8) stores lines with LF endings. */
export const asStored = (crlf: string): Buffer => Buffer.from(crlf.replace(/\r\n/g, '\n'), 'utf8');

/** swaks ends the data with CRLF "." itself, so the message goes in without its last CRLF. */
export const swaksInput = (message: string): string => message.replace(/\r\n$/, '');
