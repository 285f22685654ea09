// The wasm module's integrity, put in by vite.config.ts at build time.
declare const __WASM_INTEGRITY__: string;
