import { FORMATS } from '../formats/registry.js';
import { makeScratchDir } from '../io/local-misc.js';
import type { CommandContext } from './options.js';

/**
 * The README's first command ends here: build a small chain in a temporary
 * folder with the formats this build has, write to it, and show
 * info --backing-chain, map, and a convert + compare round trip. Each step
 * is a real command line, run by `ctx.run` (the CLI's runner, handed over
 * rather than imported: the runner loads this module).
 */
export async function runDemo({ print, run }: CommandContext, keep: boolean): Promise<void> {
  const scratch = await makeScratchDir('vdisk-demo-');
  const dir = scratch.dir;
  const has = (name: string) => FORMATS.some((f) => f.name === name);
  const step = async (args: string[]) => {
    print(`\n$ vdisk ${args.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}`);
    const code = await run(args);
    if (code !== 0 && args[0] !== 'compare') throw new Error(`demo step failed: vdisk ${args.join(' ')}`);
    return code;
  };
  const p = scratch.path;
  try {
    print(`vdisk demo in ${dir}`);
    // The base: a VHDX if this build has it, else VHD, else raw.
    const baseFmt = has('vhdx') ? 'vhdx' : has('vhd') ? 'vhd' : 'raw';
    const base = p(`base.${baseFmt}`);
    await step(['create', '-f', baseFmt, base, '64M']);
    await step(['io', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 8M 512k', base]);
    let top = base;
    // Children: a differencing VHD over it, and an add-cow over that, as available.
    const childFmt = has('vhdx') ? 'vhdx' : has('vhd') ? 'vhd' : undefined;
    if (childFmt) {
      const child = p(`child.${childFmt}`);
      await step(['create', '-f', childFmt, '-b', base, '-F', baseFmt, child]);
      await step(['io', '-c', 'write -P 0x33 512k 1M', '-c', 'write -z 8M 4k', child]);
      top = child;
    }
    // add-cow records no backing format: over a raw base, every open says it is raw (docs/security.md).
    let backingAs: string[] = [];
    if (has('add-cow')) {
      const cow = p('top.add-cow');
      await step(['create', '-f', 'add-cow', '-o', `backing_file=${top},image_file=${p('top.data.raw')}`, cow]);
      if (top === base && baseFmt === 'raw') backingAs = ['--backing-as', 'raw'];
      await step(['io', ...backingAs, '-c', 'write -P 0x44 700k 3000', cow]);
      top = cow;
    }
    await step(['io', ...backingAs, '-c', 'read -P 0x11 0 512k', '-c', 'read -P 0 8M 4k', '-c', 'read -P 0x22 8196k 4k', top]);
    await step(['info', ...backingAs, '--backing-chain', top]);
    await step(['map', ...backingAs, top]);
    await step(['map', ...backingAs, '--output=json', top]);
    const flat = p('flat.raw');
    await step(['convert', ...backingAs, '-O', 'raw', top, flat]);
    await step(['compare', ...backingAs, top, flat]);
    if (has('vhd')) {
      const vhd = p('flat.vhd');
      // force_size keeps the 64 MiB exactly: without it a VHD's size is rounded up to a whole
      // CHS geometry (docs/formats/vhd.md "Size rounding"), 64 MiB becomes 64.5 MiB, and compare
      // (rightly, as qemu-img compare) warns that the sizes differ.
      await step(['convert', '-O', 'vhd', '-o', 'subformat=dynamic,force_size=on', flat, vhd]);
      await step(['compare', flat, vhd]);
    }
    print(`\ndemo done${keep ? `; files kept in ${dir}` : ''}`);
  } finally {
    if (!keep) await scratch.remove();
  }
}
