import type { Command } from 'commander';
import { BlockError } from '../../core/errors.js';
import { parseSize } from '../../core/size.js';
import { parseOptions } from '../../ops/options.js';
import { collect, openOptions, outputOption, withOpenOptions, type CommandContext, type OpenFlags, type OutputFormat } from '../options.js';

interface MeasureOptions extends OpenFlags {
  outputFormat: string;
  options?: string[];
  format?: string;
  size?: string;
  output: OutputFormat;
  streamed?: boolean;
  backing?: string;
  backingFormat?: string;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .requiredOption('-O, --output-format <fmt>', 'format to measure for')
      .option('-o, --options <k=v,...>', 'creation options (repeatable)', collect)
      .option('-f, --format <fmt>', 'format of SRC (default: probe)')
      .option('--size <size>', 'measure a new empty disk of this size')
      .option('--streamed', 'also print the exact bytes `convert SRC -` writes as a stream (reads the data)')
      .option('-B, --backing <file>', 'with --streamed: the stream is a child of this file (as convert -B)')
      .option('-F, --backing-format <fmt>', 'format of the -B file')
      .addOption(outputOption())
      .argument('[source]'),
  );
}

export async function run({ print }: CommandContext, [source]: [string | undefined], o: MeasureOptions): Promise<void> {
  if ((source === undefined) === (o.size === undefined)) throw new BlockError('invalid-argument', 'give either SRC or --size N');
  const { measureImage } = await import('../../ops/measure.js');
  const r = await measureImage({
    format: o.outputFormat,
    options: parseOptions(o.options),
    source,
    sourceOptions: openOptions(o, o.format),
    size: o.size === undefined ? undefined : parseSize(o.size),
    streamed: o.streamed,
    backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
  });
  const upload = r['upload-size'];
  const streamed = r['streamed-size'];
  if (o.output === 'json') print(JSON.stringify({ required: r.required, 'fully-allocated': r['fully-allocated'], ...(upload !== undefined ? { 'upload-size': upload } : {}), ...(streamed === undefined ? {} : { 'streamed-size': streamed }) }, null, 4));
  else print(`required size: ${r.required}\nfully allocated size: ${r['fully-allocated']}${upload !== undefined ? `\nupload size: ${upload} (data ranges and footer sent to a page blob of ${r.required} bytes)` : ''}${streamed === undefined ? '' : `\nstreamed size: ${streamed}`}`);
}
