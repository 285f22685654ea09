// The web client's build. The engine's wasm is built first (scripts/web-build puts it in
// src/wasm/); its SHA-384 is handed to the worker as a constant, and the worker fetches the module
// with that integrity, so a changed wasm is refused. scripts/sri.mjs then adds integrity to the
// page's own script and style tags.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { defineConfig } from 'vite';

const wasm = readFileSync(new URL('./src/wasm/sotto_wasm_bg.wasm', import.meta.url));
const wasmIntegrity = `sha384-${createHash('sha384').update(wasm).digest('base64')}`;

export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  define: { __WASM_INTEGRITY__: JSON.stringify(wasmIntegrity) },
  worker: { format: 'es' },
  build: {
    target: 'es2022',
    // No inlined assets: every file is fetched from the origin, under the CSP and SRI.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
