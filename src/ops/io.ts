import { BlockError } from '../core/errors.js';
import { parseSize } from '../core/size.js';
import type { Chain } from '../chain/chain.js';

/**
 * Scripted I/O in the style of qemu-io, for tests and users:
 *   read  [-P PATTERN] OFFSET LENGTH   (verifies the pattern when given)
 *   write [-P PATTERN] OFFSET LENGTH   (default pattern 0xcd, as qemu-io)
 *   write -z OFFSET LENGTH             (write zeroes)
 *   discard|trim OFFSET LENGTH
 *   flush
 * Returns the output lines; a failed verification is a BlockError.
 */
export async function runIoCommand(chain: Chain, command: string): Promise<string> {
  const words = command.trim().split(/\s+/).filter(Boolean);
  const name = words.shift();
  let pattern: number | undefined;
  let zero = false;
  const positional: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w === '-P') {
      const p = words[++i];
      pattern = p === undefined ? NaN : Number(p);
      if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) throw new BlockError('invalid-argument', `bad pattern '${p}' (a byte, e.g. 0xab or 171)`);
    } else if (w === '-z') zero = true;
    else if (w.startsWith('-')) throw new BlockError('invalid-argument', `unknown option ${w} for '${name}'`);
    else positional.push(w);
  }
  const range = (): [number, number] => {
    if (positional.length !== 2) throw new BlockError('invalid-argument', `'${name}' needs OFFSET and LENGTH`);
    return [parseSize(positional[0], 'offset'), parseSize(positional[1], 'length')];
  };
  switch (name) {
    case 'read': {
      const [off, len] = range();
      const buf = new Uint8Array(len);
      await chain.read(off, buf);
      if (pattern !== undefined) {
        const want = Buffer.alloc(len, pattern);
        if (!want.equals(buf)) {
          const bad = buf.findIndex((x) => x !== pattern);
          throw new BlockError('mismatch', `pattern verification failed at offset ${off + bad} (expected 0x${pattern.toString(16)}, found 0x${buf[bad].toString(16)})`, {
            path: chain.top.path,
            offset: off + bad,
          });
        }
      }
      return `read ${len}/${len} bytes at offset ${off}`;
    }
    case 'write': {
      const [off, len] = range();
      if (zero) {
        if (pattern !== undefined) throw new BlockError('invalid-argument', '-z and -P cannot be combined');
        await chain.writeZeroes(off, len);
      } else await chain.write(off, new Uint8Array(len).fill(pattern ?? 0xcd));
      return `wrote ${len}/${len} bytes at offset ${off}`;
    }
    case 'discard':
    case 'trim': {
      const [off, len] = range();
      await chain.trim(off, len);
      return `discarded ${len}/${len} bytes at offset ${off}`;
    }
    case 'flush':
      await chain.flush();
      return 'flushed';
    default:
      throw new BlockError('invalid-argument', `unknown io command '${name ?? ''}' (read, write, discard, flush)`);
  }
}
