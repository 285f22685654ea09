// Adds Subresource Integrity (sha384) to every script, module preload and stylesheet that
// dist/index.html loads from the bundle, and checks that none is left without it. The wasm's
// integrity is checked by the worker's own fetch (vite.config.ts); a worker script cannot carry
// integrity (the Worker constructor has no such option), so it is covered by the CSP's 'self'.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dist = process.argv[2] ?? 'dist';
const indexPath = join(dist, 'index.html');
let html = readFileSync(indexPath, 'utf8');
let count = 0;
html = html.replace(/<(script|link)\b([^>]*?)\s(src|href)="(\/assets\/[^"]+)"([^>]*)>/g, (tag, name, before, attr, url, after) => {
  if (/\sintegrity=/.test(tag)) return tag;
  const body = readFileSync(join(dist, url));
  const integrity = `sha384-${createHash('sha384').update(body).digest('base64')}`;
  count += 1;
  return `<${name}${before} ${attr}="${url}" integrity="${integrity}"${after}>`;
});
for (const m of html.matchAll(/<(script|link)\b[^>]*>/g)) {
  const tag = m[0];
  const loads = /\s(src|href)="[^"]+"/.test(tag) && !/rel="icon"/.test(tag);
  if (loads && !/\sintegrity="sha384-/.test(tag)) {
    console.error(`sri: no integrity on ${tag}`);
    process.exit(1);
  }
  if (tag.startsWith('<script') && !/\ssrc=/.test(tag)) {
    console.error('sri: inline script in index.html (the CSP forbids it)');
    process.exit(1);
  }
}
writeFileSync(indexPath, html);
console.log(`sri: integrity on ${count} tags of ${indexPath}`);
