/** UTF-16 helpers: VHD parent names are UTF-16BE, VHD W2ku/W2ru and all VHDX strings UTF-16LE. */
export function decodeUtf16(b: Uint8Array, endian: 'le' | 'be', stopAtNul = true): string {
  const n = b.length & ~1;
  let s = '';
  const dv = new DataView(b.buffer, b.byteOffset, n);
  const units: number[] = [];
  for (let i = 0; i < n; i += 2) {
    const u = dv.getUint16(i, endian === 'le');
    if (u === 0 && stopAtNul) break;
    units.push(u);
    if (units.length >= 4096) {
      s += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  return s + String.fromCharCode(...units);
}

export function encodeUtf16(s: string, endian: 'le' | 'be'): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < s.length; i++) dv.setUint16(i * 2, s.charCodeAt(i), endian === 'le');
  return out;
}
