import { escapeControl } from '../core/escape.js';
import { formatSize } from '../core/size.js';
import type { ImageInfo } from '../ops/info.js';
import type { MapEntry } from '../ops/map.js';

/** `qemu-img info`-style human text for one layer. */
export function humanInfo(i: ImageInfo): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: ${i.format}`,
    `virtual size: ${formatSize(i['virtual-size'])} (${i['virtual-size']} bytes)`,
  ];
  if (i['actual-size'] !== undefined) lines.push(`disk size: ${formatSize(i['actual-size'])}`);
  if (i['cluster-size'] !== undefined) lines.push(`cluster_size: ${i['cluster-size']}`);
  if (i['logical-sector-size'] !== 512) lines.push(`logical sector size: ${i['logical-sector-size']}`);
  if (i['backing-filename'] !== undefined) {
    const full = i['full-backing-filename'];
    lines.push(`backing file: ${i['backing-filename']}${full && full !== i['backing-filename'] ? ` (actual path: ${full})` : ''}`);
    if (i['backing-filename-format']) lines.push(`backing file format: ${i['backing-filename-format']}`);
    if (i['backing-file-problem']) lines.push(`backing file problem: ${i['backing-file-problem']}`);
  }
  if (i['dirty-flag']) lines.push('dirty flag: yes');
  if (i['format-specific']) {
    lines.push('Format specific information:');
    for (const l of renderTree(i['format-specific'].data, 1)) lines.push(l);
  }
  // Every field may hold a name recorded in the image (backing file, parent locator): one line each, escaped.
  return lines.map(escapeControl).join('\n');
}

function renderTree(v: unknown, depth: number): string[] {
  const pad = '    '.repeat(depth);
  const out: string[] = [];
  if (Array.isArray(v)) {
    v.forEach((item, n) => {
      if (item !== null && typeof item === 'object') {
        out.push(`${pad}[${n}]:`);
        out.push(...renderTree(item, depth + 1));
      } else out.push(`${pad}[${n}]: ${String(item)}`);
    });
    return out;
  }
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    if (val !== null && typeof val === 'object') {
      out.push(`${pad}${k}:`);
      out.push(...renderTree(val, depth + 1));
    } else out.push(`${pad}${k}: ${String(val)}`);
  }
  return out;
}

/** `qemu-img map`-style human table: only ranges that some layer holds data for. */
export function humanMap(entries: MapEntry[]): string {
  const hex = (n: number) => '0x' + n.toString(16);
  const rows = ['Offset          Length          Mapped to       File'];
  for (const e of entries) {
    if (!e.data) continue;
    rows.push(`${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${(e.offset !== undefined ? hex(e.offset) : '-').padEnd(16)}${escapeControl(e.filename ?? '')}`);
  }
  return rows.join('\n');
}

/** One JSON object per line inside brackets, like qemu-img map --output=json. */
export function jsonMap(entries: MapEntry[]): string {
  const rows = entries.map((e) => {
    const { filename: _f, ...rest } = e;
    return JSON.stringify(rest);
  });
  return '[' + rows.join(',\n') + ']';
}
