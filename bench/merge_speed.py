"""The coordinator's side of a domain count with many distinct domains: decoding, checking and
merging partials of a million distinct domains each, as they come off the wire.

    .venv/bin/python bench/merge_speed.py                  # 64 partials of 1M rows, 2M domains
    .venv/bin/python bench/merge_speed.py --partials 16 --arrow   # the Arrow group-by merger

Each partial is a million distinct domains (``www.shop<i>.example.ru``) drawn from a universe of
two million, with counts of 1 to 4, sent through the Arrow IPC form the workers send. The clock
covers what the coordinator does per partial (``from_ipc``, the kind's ``check``, the merger's
``add``) and the final top 25 (``finalize``); wall and CPU seconds of this process.
``--arrow`` measures the merger without the C extension (Arrow hash aggregations).
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.protocol import QuerySpec
from tally.queries.base import from_ipc, to_ipc
from tally.queries.domains import SCHEMA, DomainCount, DomainMerger


def partials(count: int, rows: int, universe: int) -> list[bytes]:
    """``count`` IPC partials (8 distinct ones, repeated) of ``rows`` distinct domains."""
    rng = np.random.default_rng(1)
    numbers = pc.cast(pa.array(np.arange(universe)), pa.string())
    names = pc.binary_join_element_wise("www.shop", numbers, ".example.ru", "")
    names = pc.cast(names, pa.binary())
    frames = []
    for _ in range(min(count, 8)):
        chosen = pa.array(rng.choice(universe, rows, replace=False))
        n = pa.array(rng.integers(1, 5, rows), pa.int64())
        frames.append(to_ipc(pa.table([names.take(chosen), n], schema=SCHEMA)))
    return [frames[i % len(frames)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partials", type=int, default=64)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--universe", type=int, default=2_000_000)
    parser.add_argument("--arrow", action="store_true", help="without the C extension")
    args = parser.parse_args()
    frames = partials(args.partials, args.rows, args.universe)
    plan = QuerySpec(kind="top", k=25)
    kind = DomainCount()
    phases = dict.fromkeys(["decode", "check", "add", "finalize"], 0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    if args.arrow:
        with mock.patch("tally.kernels.fast.load_native", lambda: None):
            merger = DomainMerger(plan)
    else:
        merger = DomainMerger(plan)
    for frame in frames:
        at = time.perf_counter()
        table = from_ipc(frame)
        lines = pc.sum(table["n"]).as_py()
        decoded = time.perf_counter()
        kind.check(plan, table, lines, 0)
        checked = time.perf_counter()
        merger.add(table, lines, 0)
        phases["decode"] += decoded - at
        phases["check"] += checked - decoded
        phases["add"] += time.perf_counter() - checked
    at = time.perf_counter()
    result = merger.finalize()
    phases["finalize"] = time.perf_counter() - at
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = args.partials * args.rows
    print(
        f"{args.partials} partials of {args.rows:,} distinct domains "
        f"({'Arrow group-bys' if args.arrow else 'C table'}): wall {wall:.2f} s, CPU {cpu:.2f} s "
        f"({cpu / rows * 1e9:.0f} ns a row); "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f"; top row {result.rows[0]}"
    )


if __name__ == "__main__":
    main()
