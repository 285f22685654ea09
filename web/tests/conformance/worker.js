// The suite, check by check (a broken rule traps: WebAssembly cannot catch the panic, so each
// check is named before it runs).
import init, { conformanceChecks, conformanceRun } from './sotto_wasm.js';

await init({ module_or_path: fetch('sotto_wasm_bg.wasm') });
const names = conformanceChecks();
const t0 = performance.now();
let current = '';
try {
  for (let i = 0; i < names.length; i++) {
    current = names[i];
    conformanceRun(i);
  }
  self.postMessage(`ok: ${names.length} checks in ${Math.round(performance.now() - t0)} ms: ${names.join(' ')}`);
} catch (e) {
  self.postMessage(`FAILED: check ${current}: ${e}`);
}
