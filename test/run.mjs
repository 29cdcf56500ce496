#!/usr/bin/env node
// Runs the compiled test files (dist/test/**/*.test.js) with node's test runner.
// Node 20's --test takes no globs, so the files are listed here. An optional
// argument keeps only the files whose path contains it: `node test/run.mjs backend`.
import { readdirSync, statSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('../dist/test/', import.meta.url).pathname;
if (!existsSync(root)) {
  console.error('dist/test is missing: run `npx tsc -p .` first (npm test does)');
  process.exit(1);
}
const files = [];
(function walk(dir) {
  for (const entry of readdirSync(dir).sort()) {
    const p = join(dir, entry);
    if (statSync(p).isDirectory()) walk(p);
    else if (entry.endsWith('.test.js')) files.push(p);
  }
})(root);
const filter = process.argv[2];
const selected = filter ? files.filter((f) => f.includes(filter)) : files;
if (!selected.length) {
  console.error(`no test files${filter ? ` matching ${filter}` : ''}`);
  process.exit(1);
}
// One file at a time: the end-to-end files start Postfix instances and servers on fixed loopback ports.
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...selected], { stdio: 'inherit' });
process.exit(r.status ?? 1);
