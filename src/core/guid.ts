/**
 * GUIDs as VHDX (and Windows) store them: the first three fields little-endian,
 * the last 8 bytes as-is (MS-VHDX 2.2.2 refers to [MS-DTYP] GUID packet
 * representation). VHD's UUIDs are stored as 16 plain big-endian bytes; use
 * `uuidToString` for those.
 */
export function guidToString(b: Uint8Array): string {
  const h = (i: number) => b[i].toString(16).padStart(2, '0');
  return (
    h(3) + h(2) + h(1) + h(0) + '-' + h(5) + h(4) + '-' + h(7) + h(6) + '-' + h(8) + h(9) + '-' +
    h(10) + h(11) + h(12) + h(13) + h(14) + h(15)
  );
}

export function guidFromString(s: string): Uint8Array {
  const hex = s.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${s}`);
  const raw = Buffer.from(hex, 'hex');
  const out = new Uint8Array(16);
  out.set([raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6]], 0);
  out.set(raw.subarray(8), 8);
  return out;
}

/** 16 bytes in storage order, printed in order (RFC 4122 text form). */
export function uuidToString(b: Uint8Array): string {
  const hex = Buffer.from(b).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A fresh random (version 4) GUID/UUID in storage order. */
export function randomGuid(): Uint8Array {
  // Web Crypto's global (Node >= 19), loaded on first use: importing
  // node:crypto would cost every CLI start-up ~2.5 ms, making a GUID or not.
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[7] = (b[7] & 0x0f) | 0x40; // version 4 in the GUID layout (Data3 high nibble, little-endian)
  b[8] = (b[8] & 0x3f) | 0x80;
  return b;
}

export function isZeroGuid(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}
