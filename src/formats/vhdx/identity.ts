import { randomGuid } from '../../core/guid.js';
import type { IdentityChange } from '../types.js';
import type { SectorUpdates } from './journal.js';
import { GUIDS, guidText } from './layout.js';
import { stage } from './maintenance.js';
import { Page83Data } from './metadata-items.js';
import type { VhdxState } from './state.js';

/*
 * A VHDX's identity, as Set-VHD -ResetDiskIdentifier resets it: the
 * virtual disk id (the Page 83 Data metadata item, 2.6.2.5: the SCSI page
 * 0x83 identifier a guest sees, which is how Windows tells two disks apart)
 * and the DataWriteGuid (2.2.2: what a child's parent_linkage records).
 *
 * Two steps, each crash-safe by the specification's own rules:
 *   1. the headers, by the header update procedure (2.2.2.1: the
 *      non-current copy with the next sequence number, flushed, twice):
 *      new FileWriteGuid (the file is being written) and DataWriteGuid;
 *   2. the Page 83 item, through the log (2.3) as one transaction.
 * A crash between them leaves a valid image with a new DataWriteGuid and
 * the old disk id; running the reset again gives it new ones of both.
 */
export async function resetIdentityVhdx(s: VhdxState, fileGuidChanged: boolean): Promise<IdentityChange[]> {
  const oldData = guidText(s.headers.current.dataWriteGuid);
  const oldDisk = guidText(s.params.page83);
  const dataWriteGuid = randomGuid();
  await s.headers.update(fileGuidChanged ? { dataWriteGuid } : { dataWriteGuid, fileWriteGuid: randomGuid() });
  const entry = s.metadataEntries.find((e) => e.id === GUIDS.page83Data)!;
  const id = randomGuid();
  const updates: SectorUpdates = new Map();
  await stage(s, updates, s.regions.metadata.offset + entry.offset, Page83Data.encode({ id }));
  await s.journal.commit(updates, () => {});
  s.params = { ...s.params, page83: id };
  return [
    { field: 'data-write-guid', old: oldData, new: guidText(dataWriteGuid) },
    { field: 'virtual-disk-id', old: oldDisk, new: guidText(id) },
  ];
}
