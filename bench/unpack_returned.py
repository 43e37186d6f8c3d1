"""Controller CPU to unpack a job's returned files, as the file count grows.

A job chooses how many files it returns, so the unpacking (controller/sandbox/archive.py)
must cost the same per file at any count: linear, not quadratic. This builds get_archive-
like streams of N small files (in 2 MiB chunks, as docker-py yields them), unpacks each
with `unpack_returned`, and prints CPU seconds, microseconds per file, and the per-file
cost relative to the smallest N in the same process. Linear means a flat ratio (about
1.0); quadratic means it grows with N (20x files, about 20x the per-file cost).

Usage: python bench/unpack_returned.py [--counts 1000 5000 20000] [--size 64] [--repeat 3]
No Docker needed.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time

from controller.sandbox.archive import unpack_returned

CHUNK = 2 << 20  # docker-py's get_archive chunk size


def stream(count: int, size: int) -> list[bytes]:
    """A tar of out/ holding `count` files of `size` bytes, cut into chunks."""
    buffer = io.BytesIO()
    payload = b"x" * size
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        root = tarfile.TarInfo("out")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for i in range(count):
            info = tarfile.TarInfo(f"out/d{i % 50}/f{i}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def cpu_seconds(count: int, size: int, repeat: int) -> float:
    """The best of `repeat` CPU times to unpack `count` files."""
    chunks = stream(count, size)
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        # The budget covers the whole stream: tar headers cost 512 bytes a file.
        result = unpack_returned(chunks, root="out", max_bytes=sum(map(len, chunks)))
        best = min(best, time.process_time() - started)
        if len(result.files) != count or result.refused:
            raise SystemExit(f"unpacked {len(result.files)} of {count}: {result.refused}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--size", type=int, default=64, help="bytes per file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    counts = sorted(args.counts)
    print(f"{'files':>8} {'cpu s':>8} {'us/file':>8} {'vs n=' + str(counts[0]):>10}")
    base: float | None = None
    for count in counts:
        seconds = cpu_seconds(count, args.size, args.repeat)
        per_file = seconds / count
        base = base or per_file
        print(f"{count:>8} {seconds:>8.3f} {per_file * 1e6:>8.1f} {per_file / base:>10.2f}")


if __name__ == "__main__":
    main()
