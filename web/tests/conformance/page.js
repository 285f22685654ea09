// Runs the client store conformance suite in a dedicated worker, where the web client's engine
// runs, and shows the outcome on the page.
const worker = new Worker('worker.js', { type: 'module' });
worker.onmessage = (e) => {
  document.getElementById('result').textContent = e.data;
};
worker.onerror = (e) => {
  document.getElementById('result').textContent = `FAILED: worker error ${e.message}`;
};
