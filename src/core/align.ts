/**
 * The one head/body/tail helper for unaligned I/O (architecture rule 6).
 *
 *   offset                                              offset+length
 *     |<- head ->|<------------ body ------------>|<- tail ->|
 *   --+----------+--------------------------------+----------+--
 *   ^ aligned    ^ aligned                        ^ aligned
 *
 * `head` and `tail` are the partial units at either end (each at most one
 * `align` unit, and possibly the same unit when the range lies inside one);
 * `body` is the aligned middle.
 */
export interface AlignedSplit {
  /** The whole aligned unit containing the start, when the start is unaligned. */
  head: { unit: number; from: number; to: number } | null;
  body: { offset: number; length: number } | null;
  tail: { unit: number; from: number; to: number } | null;
}

export function splitAligned(offset: number, length: number, align: number): AlignedSplit {
  if (length === 0) return { head: null, body: null, tail: null };
  const end = offset + length;
  const firstUnit = Math.floor(offset / align) * align;
  if (end <= firstUnit + align) {
    // The whole range lies inside one unit.
    if (offset === firstUnit && end === firstUnit + align) return { head: null, body: { offset, length }, tail: null };
    return { head: { unit: firstUnit, from: offset - firstUnit, to: end - firstUnit }, body: null, tail: null };
  }
  const head = offset === firstUnit ? null : { unit: firstUnit, from: offset - firstUnit, to: align };
  const tailUnit = Math.floor(end / align) * align;
  const tail = end === tailUnit ? null : { unit: tailUnit, from: 0, to: end - tailUnit };
  const bodyStart = head ? firstUnit + align : offset;
  const bodyEnd = tail ? tailUnit : end;
  return { head, body: bodyEnd > bodyStart ? { offset: bodyStart, length: bodyEnd - bodyStart } : null, tail };
}

type UnitPart = { unit: number; from: number; to: number };

/** Read the unit holding a partial piece, let `fill` change [from, to) of it, write it back whole. */
async function mergeUnit(
  p: UnitPart,
  align: number,
  readUnit: (unitOffset: number, into: Uint8Array) => Promise<void>,
  writeAligned: (offset: number, data: Uint8Array) => Promise<void>,
  fill: (unit: Uint8Array, p: UnitPart) => void,
): Promise<void> {
  const unit = new Uint8Array(align);
  await readUnit(p.unit, unit);
  fill(unit, p);
  await writeAligned(p.unit, unit);
}

/**
 * Write `data` at `offset` through a sink that accepts only whole `align`
 * units: partial units are read (through `readUnit`), merged and written whole.
 */
export async function writeUnaligned(
  offset: number,
  data: Uint8Array,
  align: number,
  readUnit: (unitOffset: number, into: Uint8Array) => Promise<void>,
  writeAligned: (offset: number, data: Uint8Array) => Promise<void>,
): Promise<void> {
  const s = splitAligned(offset, data.length, align);
  const merge = (unit: Uint8Array, p: UnitPart) => {
    const srcStart = p.unit + p.from - offset;
    unit.set(data.subarray(srcStart, srcStart + (p.to - p.from)), p.from);
  };
  if (s.head) await mergeUnit(s.head, align, readUnit, writeAligned, merge);
  if (s.body) await writeAligned(s.body.offset, data.subarray(s.body.offset - offset, s.body.offset - offset + s.body.length));
  if (s.tail) await mergeUnit(s.tail, align, readUnit, writeAligned, merge);
}

const zeroPart = (unit: Uint8Array, p: UnitPart) => unit.fill(0, p.from, p.to);

/**
 * The zero variant of writeUnaligned: make [offset, offset+length) read as
 * zeros through a sink that takes only whole `align` units. The whole units
 * go to `zeroAligned` (a layer's writeZeroes, which may record zeros without
 * writing them); a partial unit at either end is read, zeroed in part and
 * written whole with `writeAligned`.
 */
export async function zeroUnaligned(
  offset: number,
  length: number,
  align: number,
  readUnit: (unitOffset: number, into: Uint8Array) => Promise<void>,
  writeAligned: (offset: number, data: Uint8Array) => Promise<void>,
  zeroAligned: (offset: number, length: number) => Promise<void>,
): Promise<void> {
  const s = splitAligned(offset, length, align);
  if (s.head) await mergeUnit(s.head, align, readUnit, writeAligned, zeroPart);
  if (s.body) await zeroAligned(s.body.offset, s.body.length);
  if (s.tail) await mergeUnit(s.tail, align, readUnit, writeAligned, zeroPart);
}

/**
 * Split [offset, offset+length) at multiples of `unit` (a format's block):
 * each piece with its unit index, the unit's start and the piece's bounds.
 * The one block walk of the block-based formats.
 */
export function* unitPieces(
  offset: number,
  length: number,
  unit: number,
): Generator<{ index: number; unitStart: number; start: number; end: number }> {
  const end = offset + length;
  for (let pos = offset; pos < end; ) {
    const index = Math.floor(pos / unit);
    const unitStart = index * unit;
    const pieceEnd = Math.min(unitStart + unit, end);
    yield { index, unitStart, start: pos, end: pieceEnd };
    pos = pieceEnd;
  }
}
