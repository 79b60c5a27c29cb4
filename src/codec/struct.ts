import { BlockError } from '../core/errors.js';

/**
 * Declarative on-disk structures (architecture rule 2). A struct is a field
 * table; its total size is checked once against the size the specification
 * gives, and decode/encode are derived from the table so the two can never
 * disagree.
 *
 *   const Footer = defineStruct('VHD footer', 'be', 512, [
 *     { name: 'cookie', type: 'bytes', size: 8 },
 *     { name: 'features', type: 'u32' }, ...
 *   ]);
 *   const f = Footer.decode(buf); f.features // number
 */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'bytes';

export interface FieldSpec {
  readonly name: string;
  readonly type: FieldType;
  /** Byte length, for 'bytes' only. */
  readonly size?: number;
}

type ValueOf<T extends FieldType> = T extends 'u64' ? bigint : T extends 'bytes' ? Uint8Array : number;

export type StructValue<F extends readonly FieldSpec[]> = {
  -readonly [K in F[number] as K['name']]: ValueOf<K['type']>;
};

export interface Struct<F extends readonly FieldSpec[]> {
  readonly name: string;
  readonly SIZE: number;
  /** Byte offset of each field, e.g. to zero a checksum field before summing. */
  readonly offsets: Readonly<Record<F[number]['name'], number>>;
  decode(buf: Uint8Array, at?: number): StructValue<F>;
  /** Encode into `into` (default: a fresh zeroed buffer of SIZE bytes); bytes not covered by fields are left as they are. */
  encode(value: StructValue<F>, into?: Uint8Array, at?: number): Uint8Array;
}

const WIDTH: Record<Exclude<FieldType, 'bytes'>, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export function defineStruct<const F extends readonly FieldSpec[]>(
  name: string,
  endian: 'le' | 'be',
  size: number,
  fields: F,
): Struct<F> {
  const le = endian === 'le';
  const offsets: Record<string, number> = {};
  let pos = 0;
  for (const f of fields) {
    offsets[f.name] = pos;
    pos += f.type === 'bytes' ? (f.size ?? 0) : WIDTH[f.type];
  }
  // Fields may describe a prefix of a padded structure (reserved bytes at the end).
  if (pos > size) throw new Error(`struct ${name}: fields take ${pos} bytes, more than its ${size}`);

  return {
    name,
    SIZE: size,
    offsets: offsets as Record<F[number]['name'], number>,
    decode(buf: Uint8Array, at = 0): StructValue<F> {
      if (at < 0 || at + size > buf.length) {
        throw new BlockError('corrupt', `${name} is truncated (${buf.length - at} of ${size} bytes)`);
      }
      const dv = new DataView(buf.buffer, buf.byteOffset + at, size);
      const out: Record<string, unknown> = {};
      for (const f of fields) {
        const o = offsets[f.name];
        switch (f.type) {
          case 'u8': out[f.name] = dv.getUint8(o); break;
          case 'u16': out[f.name] = dv.getUint16(o, le); break;
          case 'u32': out[f.name] = dv.getUint32(o, le); break;
          case 'u64': out[f.name] = dv.getBigUint64(o, le); break;
          case 'bytes': out[f.name] = buf.slice(at + o, at + o + (f.size ?? 0)); break;
        }
      }
      return out as StructValue<F>;
    },
    encode(value: StructValue<F>, into = new Uint8Array(size), at = 0): Uint8Array {
      const dv = new DataView(into.buffer, into.byteOffset + at, size);
      const v = value as Record<string, unknown>;
      for (const f of fields) {
        const o = offsets[f.name];
        switch (f.type) {
          case 'u8': dv.setUint8(o, v[f.name] as number); break;
          case 'u16': dv.setUint16(o, v[f.name] as number, le); break;
          case 'u32': dv.setUint32(o, (v[f.name] as number) >>> 0, le); break;
          case 'u64': dv.setBigUint64(o, BigInt(v[f.name] as bigint | number), le); break;
          case 'bytes': {
            const b = v[f.name] as Uint8Array;
            const n = f.size ?? 0;
            into.fill(0, at + o, at + o + n);
            into.set(b.subarray(0, n), at + o);
            break;
          }
        }
      }
      return into;
    },
  };
}
