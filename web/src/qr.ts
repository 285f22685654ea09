// A link code as a QR code, drawn as SVG path data (no inline style, so the CSP holds).
import qrcode from 'qrcode-generator';

/** The QR code's size in modules and one SVG path that draws its dark modules. */
export function qrPath(text: string): { size: number; d: string } {
  const qr = qrcode(0, 'M');
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  let d = '';
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      if (qr.isDark(y, x)) d += `M${x + 4} ${y + 4}h1v1h-1z`;
    }
  }
  return { size: n + 8, d };
}
