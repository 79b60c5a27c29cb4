#!/usr/bin/env python3
"""Independent VHD reader, written straight from the 2006 "Virtual Hard Disk
Image Format Specification" (footer, dynamic header, BAT, per-sector bitmap),
as an oracle for vdisk's tests. Usage: vhd_reader.py TOP [PARENT ...]
(files top first). Prints "<sha256 of the whole disk> <size>"; with
--raw OUT it also writes the disk to OUT."""
import hashlib, struct, sys

class Vhd:
    def __init__(self, path):
        self.f = open(path, 'rb')
        self.f.seek(0, 2)
        footer = self.at(self.f.tell() - 512, 512)
        assert footer[:8] == b'conectix', 'no footer'
        self.size, = struct.unpack('>Q', footer[48:56])
        self.type, = struct.unpack('>I', footer[60:64])
        self.uuid = footer[68:84]
        self.bitmaps = {}
        if self.type == 2:
            return
        data_offset, = struct.unpack('>Q', footer[16:24])
        hdr = self.at(data_offset, 1024)
        assert hdr[:8] == b'cxsparse', 'no dynamic header'
        table, = struct.unpack('>Q', hdr[16:24])
        entries, self.block = struct.unpack('>II', hdr[28:36])
        self.parent_uuid = hdr[40:56]
        self.bat = struct.unpack('>%dI' % entries, self.at(table, 4 * entries))
        self.bitmap_bytes = -(-(self.block // 512 // 8) // 512) * 512

    def at(self, off, n):
        self.f.seek(off)
        return self.f.read(n).ljust(n, b'\0')

    def sector(self, n, parent):
        """Sector n: from this file, or (differencing, bit clear) from the parent."""
        if self.type == 2:
            return self.at(n * 512, 512)
        per_block = self.block // 512
        entry = self.bat[n // per_block]
        if entry == 0xFFFFFFFF:
            return parent(n) if self.type == 4 else bytes(512)
        i = n % per_block
        if self.type == 4:
            if entry not in self.bitmaps:
                self.bitmaps[entry] = self.at(entry * 512, self.bitmap_bytes)
            bitmap = self.bitmaps[entry]
            if not bitmap[i // 8] & (0x80 >> (i % 8)):
                return parent(n)
        return self.at(entry * 512 + self.bitmap_bytes + i * 512, 512)

def main():
    args = sys.argv[1:]
    raw = None
    if args[0] == '--raw':
        raw, args = open(args[1], 'wb'), args[2:]
    chain = [Vhd(p) for p in args]
    for child, parent in zip(chain, chain[1:]):
        assert child.type == 4 and child.parent_uuid == parent.uuid, 'parent UUID mismatch'
    def reader(depth):
        if depth == len(chain):
            return lambda n: bytes(512)
        return lambda n: chain[depth].sector(n, reader(depth + 1))
    top = reader(0)
    h = hashlib.sha256()
    for n in range(chain[0].size // 512):
        s = top(n)
        h.update(s)
        if raw:
            raw.write(s)
    print(h.hexdigest(), chain[0].size)

main()
