"""Zero the GPU code for other architectures in a CUDA library, so that it compresses to what one GPU runs.

    python benchmarks/prune_fatbin.py LIBRARY.so 90        # keep sm_90 (H100/H200), write LIBRARY.so.pruned
    python benchmarks/prune_fatbin.py LIBRARY.so           # only list the architectures and their sizes

Why: a lent GPU machine has no network and a call carries at most 64 MiB, while onnxruntime-gpu's CUDA
provider is 284 MB (185 MB as xz), 218 MB of it device code for six architectures.  The entries of the
``.nv_fatbin`` section keep their headers and sizes (so every address in the library stays valid) and
only the payloads of the other architectures become zeros; the CUDA runtime picks the entry for the GPU
present, and the pruned library compresses to ~52 MB.  For the benchmark machine only, never shipped.
"""

from __future__ import annotations

import collections
import struct
import subprocess
import sys

FATBIN_MAGIC = 0xBA55ED50


def section(path: str, name: str) -> tuple[int, int]:
    """File offset and size of an ELF section, read with readelf."""
    listing = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        if f" {name} " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    raise SystemExit(f"{path}: no {name} section")


def entries(buf: bytes, start: int, size: int):
    """(offset, header size, padded payload size, sm) of every entry of every fatbin in the section."""
    pos, end = start, start + size
    while pos < end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", buf, pos)
        if magic != FATBIN_MAGIC:  # alignment padding between fatbins
            pos += 8
            continue
        entry, stop = pos + header_size, pos + header_size + fat_size
        while entry < stop:
            _kind, _v, entry_header, padded = struct.unpack_from("<HHII", buf, entry)
            yield entry, entry_header, padded, struct.unpack_from("<I", buf, entry + 28)[0]
            entry += entry_header + padded
        pos = stop


def main() -> None:
    path = sys.argv[1]
    keep = {int(sm) for sm in sys.argv[2].split(",")} if len(sys.argv) > 2 else None
    with open(path, "rb") as library:
        buf = bytearray(library.read())
    sizes: collections.Counter[int] = collections.Counter()
    for entry, header, padded, sm in entries(buf, *section(path, ".nv_fatbin")):
        sizes[sm] += padded
        if keep is not None and sm not in keep:
            buf[entry + header:entry + header + padded] = bytes(padded)
    for sm, size in sorted(sizes.items()):
        print(f"sm_{sm}: {size / 1e6:.0f} MB" + ("" if keep is None or sm in keep else " (zeroed)"))
    if keep is not None:
        with open(path + ".pruned", "wb") as out:
            out.write(buf)


if __name__ == "__main__":
    main()
