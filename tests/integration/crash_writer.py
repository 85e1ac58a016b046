#!/usr/bin/env python3
"""Random 4 KiB writes whose every completion is logged, and their checks
(live_crash.sh).

  crash_writer.py write DEV LOG SEED
      Opens DEV O_RDWR|O_DIRECT and writes 4 KiB blocks at random block
      numbers (from SEED), one at a time, from a page-aligned (mmap'd)
      buffer. Each block holds a header (magic, run id, block number,
      sequence number) and filler derived from it; the run id is random
      (LOG's first line, "r ID"), so no block an earlier run wrote passes
      for one of this run. Before each write "s BLOCK SEQ" is appended to
      LOG, after it returns "d BLOCK SEQ"; both flushed. At the first error
      (the daemon died) it logs "e BLOCK SEQ ERRNO" and stops.

  crash_writer.py check IMAGE LOG BEFORE
      IMAGE (the disk read after the restart) must hold, in every block
      LOG names, the content of its last completed write, or that of a
      write started after it that never completed (the one in flight when
      the daemon died); every other block must be as in BEFORE (the disk
      before the writer started).

  crash_writer.py pit IMAGE LOG BEFORE
      IMAGE (a snapshot taken while the writer ran) must be a point in
      time: the state after the first T writes of LOG, for some T.
"""
import hashlib
import mmap
import os
import random
import struct
import sys
import time

BLK = 4096
MAGIC = b"dsnapcrw"
HDR = struct.Struct("<8sQQQ")  # magic, run id, block, sequence number


def content(run, block, seq):
    h = HDR.pack(MAGIC, run, block, seq)
    return h + hashlib.shake_128(h).digest(BLK - HDR.size)


def decode(data, run, block):
    """The sequence number of this run's write BLOCK holds, or None."""
    magic, r, b, seq = HDR.unpack_from(data)
    if magic == MAGIC and r == run and b == block and data == content(run, block, seq):
        return seq
    return None


def write(dev, log_path, seed):
    rng = random.Random(seed)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    nblocks = os.lseek(fd, 0, os.SEEK_END) // BLK
    buf = mmap.mmap(-1, BLK)  # page-aligned, as O_DIRECT wants
    run = int.from_bytes(os.urandom(8), "little")
    seq = 0
    deadline = time.monotonic() + 120  # never outlive a test that forgot us
    with open(log_path, "w") as log:
        log.write(f"r {run}\n")
        log.flush()
        while time.monotonic() < deadline:
            seq += 1
            block = rng.randrange(nblocks)
            buf[:] = content(run, block, seq)
            log.write(f"s {block} {seq}\n")
            log.flush()
            try:
                n = os.pwrite(fd, buf, block * BLK)
                if n != BLK:
                    raise OSError(0, f"short write {n}")
            except OSError as e:
                log.write(f"e {block} {seq} {e.errno}\n")
                log.flush()
                break
            log.write(f"d {block} {seq}\n")
            log.flush()
    os.close(fd)


def read_log(path):
    """The run id; per block, its writes in order: [[seq, done]]; the
    numbers of writes started and completed."""
    writes, index = {}, {}
    run = None
    nstart = ndone = 0
    with open(path) as f:
        for line in f:
            p = line.split()
            if not line.endswith("\n"):
                continue  # cut short: the writer was killed (never a pwrite's "s")
            if p[0] == "r":
                run = int(p[1])
                continue
            kind, block, seq = p[0], int(p[1]), int(p[2])
            if kind == "s":
                writes.setdefault(block, []).append([seq, False])
                index[seq] = writes[block][-1]
                nstart += 1
            elif kind == "d":
                index[seq][1] = True
                ndone += 1
    if run is None:
        raise SystemExit(f"{path}: no run id")
    return run, writes, nstart, ndone


def describe(data, run, block, before):
    seq = decode(data, run, block)
    if seq is not None:
        return f"write #{seq}"
    if data == before:
        return "its content before the writer"
    magic, r, b, s = HDR.unpack_from(data)
    if magic == MAGIC:
        return (f"a damaged, misplaced or older write (header: run {r:#x}, block {b}, "
                f"seq {s}; this run is {run:#x})")
    return "unknown data"


def held(data, run, block, before):
    """The write BLOCK holds: its sequence number, 0 for its content before
    the writer, None for anything else."""
    seq = decode(data, run, block)
    if seq is not None:
        return seq
    return 0 if data == before else None


def scan(image, before_path, run, writes, judge):
    """Calls judge(block, data, before) for every block; returns the errors."""
    errors = []
    with open(image, "rb") as img, open(before_path, "rb") as bef:
        block = 0
        while True:
            a = img.read(BLK * 256)
            b = bef.read(BLK * 256)
            if not a and not b:
                break
            if len(a) != len(b):
                errors.append(f"size differs at block {block}")
                break
            for i in range(0, len(a), BLK):
                da, db = a[i:i + BLK], b[i:i + BLK]
                w = writes.get(block)
                if w is None:
                    if da != db:
                        errors.append(f"block {block}, never written, holds "
                                      f"{describe(da, run, block, db)}")
                else:
                    e = judge(block, da, db, w)
                    if e:
                        errors.append(e)
                block += 1
    return errors


def check(image, log_path, before_path):
    run, writes, nstart, ndone = read_log(log_path)
    landed = [0]

    def judge(block, data, before, w):
        done = [s for s, d in w if d]
        last = done[-1] if done else 0
        allowed = {last}
        allowed.update(s for s, d in w if not d and s > last)
        seq = held(data, run, block, before)
        if seq in allowed:
            if seq != last:
                landed[0] += 1
            return None
        want = f"write #{last}" if last else "its content before the writer"
        extra = [s for s in allowed if s != last]
        if extra:
            want += f" (or the unfinished write #{extra[0]})"
        return (f"block {block} holds {describe(data, run, block, before)}, not {want}; "
                f"its writes: {w}")

    errors = scan(image, before_path, run, writes, judge)
    print(f"   {ndone} writes completed to {len(writes)} blocks; "
          f"{nstart - ndone} unfinished, {landed[0]} of them landed")
    return errors


def pit(image, log_path, before_path):
    run, writes, nstart, _ = read_log(log_path)
    lo, hi = [0], [nstart]  # T in [lo, hi]
    why = {}

    def judge(block, data, before, w):
        seqs = [s for s, _ in w]
        seq = held(data, run, block, before)
        if seq is None or (seq and seq not in seqs):
            return f"block {block} of the snapshot holds {describe(data, run, block, before)}"
        i = seqs.index(seq) if seq else -1
        a = seq
        b = seqs[i + 1] - 1 if i + 1 < len(seqs) else nstart
        if a > lo[0]:
            lo[0] = a
            why["lo"] = f"block {block} holds write #{seq}"
        if b < hi[0]:
            hi[0] = b
            why["hi"] = (f"block {block} holds {'write #%d' % seq if seq else 'its old content'}"
                         f", not write #{b + 1}")
        return None

    errors = scan(image, before_path, run, writes, judge)
    if not errors and lo[0] > hi[0]:
        errors.append(f"not a point in time: {why.get('lo')}, {why.get('hi')}")
    if not errors:
        print(f"   the snapshot is the disk after write #{lo[0]}..{hi[0]} of {nstart}")
    return errors


def main():
    mode = sys.argv[1]
    if mode == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    errors = (check if mode == "check" else pit)(*sys.argv[2:5])
    for e in errors[:20]:
        print("   " + e, file=sys.stderr)
    if len(errors) > 20:
        print(f"   ... {len(errors) - 20} more", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
