#!/usr/bin/env python3
"""Independent VHDX reader, written straight from the "VHDX Format
Specification" v1.00 (2.2 header section, 2.3 region table, 2.5 BAT,
2.6 metadata region, 2.6.2.6 parent locator), as an oracle for vdisk's tests.
Usage: vhdx_reader.py TOP [PARENT ...] (files top first). Prints
"<sha256 of the whole disk> <size>": the top's virtual size; a parent shorter
than its child reads zeros past its end (nothing in the specification ties a
child's size to its parent's). Assumes a clean log (no replay), as vdisk
leaves its files after a flush."""
import hashlib, struct, sys, uuid

MiB = 1 << 20
BAT_REGION = uuid.UUID('2DC27766-F623-4200-9D64-115E9BFD4A08')
METADATA_REGION = uuid.UUID('8B7CA206-4790-4B9A-B8FE-575F050F886E')
FILE_PARAMETERS = uuid.UUID('CAA16737-FA36-4D43-B3B6-33F0AA44E76B')
VIRTUAL_DISK_SIZE = uuid.UUID('2FA54224-CD1B-4876-B211-5DBED83BF4B8')
LOGICAL_SECTOR_SIZE = uuid.UUID('8141BF1D-A96F-4709-BA47-F233A8FAAB5F')
PARENT_LOCATOR = uuid.UUID('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C')
# 2.5.1 block states
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7


def guid(b):
    return uuid.UUID(bytes_le=bytes(b))


class Vhdx:
    def __init__(self, path):
        self.f = open(path, 'rb')
        assert self.at(0, 8) == b'vhdxfile', 'no file type identifier'
        # 2.3: the region table at 192 KiB (its copy at 256 KiB is the same when the file is clean).
        rt = self.at(192 * 1024, 64 * 1024)
        assert rt[:4] == b'regi', 'no region table'
        count, = struct.unpack_from('<I', rt, 8)
        regions = {}
        for i in range(count):
            g, off, length, _ = struct.unpack_from('<16sQII', rt, 16 + 32 * i)
            regions[guid(g)] = (off, length)
        md_off, _ = regions[METADATA_REGION]
        md = self.at(md_off, 64 * 1024)
        assert md[:8] == b'metadata', 'no metadata table'
        n, = struct.unpack_from('<H', md, 10)
        items = {}
        for i in range(n):
            g, off, length, _ = struct.unpack_from('<16sIII', md, 32 + 32 * i)
            items[guid(g)] = self.at(md_off + off, length)
        self.block, flags = struct.unpack('<II', items[FILE_PARAMETERS][:8])
        self.has_parent = bool(flags & 2)
        self.size, = struct.unpack('<Q', items[VIRTUAL_DISK_SIZE][:8])
        self.lss, = struct.unpack('<I', items[LOGICAL_SECTOR_SIZE][:4])
        self.linkage = None
        if PARENT_LOCATOR in items:
            self.linkage = self.locator(items[PARENT_LOCATOR]).get('parent_linkage')
        self.chunk_ratio = (1 << 23) * self.lss // self.block
        bat_off, bat_len = regions[BAT_REGION]
        self.bat = struct.unpack('<%dQ' % (bat_len // 8), self.at(bat_off, bat_len))
        # 2.2.2: the current header is the valid one with the larger sequence number.
        heads = []
        for off in (64 * 1024, 128 * 1024):
            h = self.at(off, 4096)
            if h[:4] == b'head':
                seq, = struct.unpack_from('<Q', h, 8)
                heads.append((seq, guid(h[32:48])))
        self.data_write_guid = max(heads)[1]
        self.bitmaps = {}

    def at(self, off, n):
        self.f.seek(off)
        return self.f.read(n).ljust(n, b'\0')

    @staticmethod
    def locator(raw):
        # 2.6.2.6: header (locator type GUID, reserved, key-value count), then entries of UTF-16LE offsets/lengths.
        count, = struct.unpack_from('<H', raw, 18)
        out = {}
        for i in range(count):
            ko, vo, kl, vl = struct.unpack_from('<IIHH', raw, 20 + 12 * i)
            out[raw[ko:ko + kl].decode('utf-16-le')] = raw[vo:vo + vl].decode('utf-16-le')
        return out

    def read(self, off, n, parent):
        """n bytes at off (within one block, whole logical sectors)."""
        b = off // self.block
        entry = self.bat[b + b // self.chunk_ratio]
        state, host = entry & 7, (entry >> 20) * MiB
        within = off - b * self.block
        if state == FULLY_PRESENT:
            return self.at(host + within, n)
        if not self.has_parent or state in (ZERO, UNMAPPED, UNDEFINED):
            return bytes(n)
        if state == NOT_PRESENT:
            return parent(off, n)
        assert state == PARTIALLY_PRESENT
        # 2.5.3: the chunk's sector bitmap block has one bit per logical sector, set where the block holds the data.
        c = b // self.chunk_ratio
        sb = self.bat[c * (self.chunk_ratio + 1) + self.chunk_ratio]
        assert sb & 7 == 6, 'partially present block without a sector bitmap'
        if c not in self.bitmaps:
            self.bitmaps[c] = self.at((sb >> 20) * MiB, MiB)
        bits = self.bitmaps[c]
        out = bytearray()
        first = (off - c * self.chunk_ratio * self.block) // self.lss
        for s in range(n // self.lss):
            i = first + s
            o = off + s * self.lss
            if bits[i // 8] & (1 << (i % 8)):
                out += self.at(host + within + s * self.lss, self.lss)
            else:
                out += parent(o, self.lss)
        return bytes(out)


def main():
    chain = [Vhdx(p) for p in sys.argv[1:]]
    for child, parent in zip(chain, chain[1:]):
        assert child.has_parent, 'a file after the first has no child'
        assert child.linkage and uuid.UUID(child.linkage.strip('{}')) == parent.data_write_guid, 'parent_linkage is not the parent\'s DataWriteGuid'

    def reader(depth):
        if depth == len(chain):
            return lambda off, n: bytes(n)
        layer = chain[depth]
        below = reader(depth + 1)

        def read(off, n):
            # Past this layer's end its child reads zeros.
            inside = max(0, min(n, layer.size - off))
            return layer.read(off, inside, below) + bytes(n - inside) if inside else bytes(n)
        return read

    top = reader(0)
    size, unit = chain[0].size, chain[0].block
    h = hashlib.sha256()
    off = 0
    while off < size:
        # One block at a time, cut where any layer's end falls (reads never cross a layer's end or block).
        n = min(unit - off % unit, size - off)
        for l in chain:
            if off < l.size < off + n:
                n = l.size - off
            if l.block < n:
                n = min(n, l.block - off % l.block)
        h.update(top(off, n))
        off += n
    print(h.hexdigest(), size)


main()
