#!/usr/bin/python3
"""Independent add-cow reader, written from docs/formats/add-cow.md only.

usage: addcow_reader.py ADDCOW_FILE [OUT_RAW]
Prints "<sha256> <size>" of the disk; writes the disk to OUT_RAW if given.
The backing file is read through `qemu-img convert -O raw` (format probed).
"""
import hashlib, os, struct, subprocess, sys, tempfile

path = sys.argv[1]
folder = os.path.dirname(os.path.abspath(path))
with open(path, 'rb') as f:
    blob = f.read()

if len(blob) < 2068:
    sys.exit('header truncated')
magic, version = blob[0:8], struct.unpack('>I', blob[8:12])[0]
if magic != b'ADD_COW\xff' or version != 1:
    sys.exit('bad magic or version')

def name(field):
    if b'\0' not in field:
        sys.exit('unterminated name')
    return field[:field.index(b'\0')].decode('utf-8')

backing, image = name(blob[12:1036]), name(blob[1036:2060])
size = struct.unpack('>Q', blob[2060:2068])[0]
if size % 512 or not image:
    sys.exit('bad size or empty image name')
sectors = size // 512
bitmap = blob[2068:2068 + (sectors + 7) // 8]
if len(bitmap) != (sectors + 7) // 8:
    sys.exit('bitmap truncated')

def resolve(n):
    n = n.replace('\\', '/')
    return n if os.path.isabs(n) else os.path.join(folder, n)

with open(resolve(image), 'rb') as f:
    image_data = f.read(size)
if len(image_data) < size:
    sys.exit('image file shorter than the disk')

backing_data = b''
if backing:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'backing.raw')
        subprocess.run(['qemu-img', 'convert', '-O', 'raw', resolve(backing), out], check=True)
        with open(out, 'rb') as f:
            backing_data = f.read(size)
backing_data = backing_data.ljust(size, b'\0')[:size]

disk = bytearray(size)
for n in range(sectors):
    src = image_data if (bitmap[n // 8] >> (n % 8)) & 1 else backing_data
    disk[n * 512:(n + 1) * 512] = src[n * 512:(n + 1) * 512]

if len(sys.argv) > 2:
    with open(sys.argv[2], 'wb') as f:
        f.write(disk)
print(hashlib.sha256(disk).hexdigest(), size)
