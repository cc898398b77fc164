"""Synthetic partitions for bench/kernel_speed.py: the data-shape matrix, the generator's
log and the real sample repeated.

A matrix shape sets the mean line length, the number of distinct domains the lines draw from
(uniformly: the hash table's worst case), the share of URLs without a scheme, the share of
URLs with a second ``://`` in their query string, the share of schemes in other cases or
other protocols (``HTTP://``, ``Https://``, ``ftp://``), and whether lines end in ``\\r\\n``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"

_WORDS = [b"shop", b"news", b"auto", b"kino", b"mail", b"forum", "город".encode(), b"sport"]
_TLDS = [b".ru", b".com", b".ua", b".net", b".info", b".org", ".рф".encode()]
_PATH = b"abcdefghijklmnopqrstuvwxyz0123456789-_.%/=&"
_SCHEMES = (b"http://", b"https://")
_OTHER_SCHEMES = (b"HTTP://", b"Http://", b"HTTPS://", b"Https://", b"ftp://", b"android-app://")


@dataclass(frozen=True)
class Shape:
    name: str
    line: int = 100  # mean bytes a line, line ending included
    distinct: int = 3000  # domains to draw from
    no_scheme: float = 0.03  # share of URLs without "://" (the whole URL is the domain)
    query_sep: float = 0.0  # share of URLs with "://" again in their query string
    other_scheme: float = 0.0  # share of schemes other than lower-case http(s)
    crlf: bool = False

    def describe(self) -> str:
        parts = [f"{self.line} B/line", f"{self.distinct:,} domains"]
        if self.no_scheme != 0.03:
            parts.append(f"{self.no_scheme:.0%} no scheme")
        if self.query_sep:
            parts.append(f"{self.query_sep:.0%} :// in query")
        if self.other_scheme:
            parts.append(f"{self.other_scheme:.0%} other schemes")
        if self.crlf:
            parts.append("CRLF")
        return ", ".join(parts)


def _domains(count: int, rnd: random.Random) -> list[bytes]:
    names: set[bytes] = set()
    while len(names) < count:
        word = rnd.choice(_WORDS)
        prefix = rnd.choice((b"", b"www.", b"m.", b"img%d." % rnd.randrange(10)))
        names.add(prefix + word + b"%d" % rnd.randrange(4 * count) + rnd.choice(_TLDS))
    return sorted(names)


def generate_shape(shape: Shape, size: int, seed: int = 1) -> bytes:
    """About ``size`` bytes of ``<id>\\t<url>`` lines of ``shape``."""
    rnd = random.Random(seed)
    domains = _domains(shape.distinct, rnd)
    ending = b"\r\n" if shape.crlf else b"\n"
    filler = bytes(rnd.choice(_PATH) for _ in range(1 << 16))
    out: list[bytes] = []
    total = 0
    while total < size:
        domain = rnd.choice(domains)
        ident = b"%d" % rnd.getrandbits(rnd.choice((20, 40, 63)))
        if rnd.random() < shape.no_scheme:
            url = rnd.choice((b"http:%2F%2F", b"")) + domain
        else:
            others = rnd.random() < shape.other_scheme
            url = rnd.choice(_OTHER_SCHEMES if others else _SCHEMES) + domain + b"/"
            if rnd.random() < shape.query_sep:
                url += b"?u=http://" + rnd.choice(domains)[:6].decode("utf-8", "ignore").encode()
            want = rnd.randint(shape.line * 3 // 4, shape.line * 5 // 4)
            room = want - len(ident) - len(url) - 1 - len(ending)
            if room > 0:
                at = rnd.randrange(len(filler) - room)
                url += filler[at : at + room]
        line = ident + b"\t" + url + ending
        out.append(line)
        total += len(line)
    return b"".join(out)


def generate_log(size: int, seed: int = 1) -> bytes:
    """Lines ``<id>\\t<url>\\n`` of ~100 bytes: about half of them in the 25 most frequent
    domains of the published result, the rest in a long tail of ~8000 synthetic domains,
    with paths taken from the 200-line ClickBench sample."""
    rnd = random.Random(seed)
    paths = []
    for line in (DATA / "clickbench-sample-200.tsv").read_bytes().splitlines():
        url = line.split(b"\t")[1]
        sep = url.find(b"://")
        rest = url[sep + 3 :] if sep >= 0 else url
        slash = rest.find(b"/")
        paths.append(rest[slash:] if slash >= 0 else b"/")
    top = [
        line.rsplit(b" ", 1)
        for line in (DATA / "clickbench-top25-expected.txt").read_bytes().splitlines()
    ]
    top_domains, top_weights = [d for d, _ in top], [int(c) for _, c in top]
    tail = sorted({rnd.choice(_WORDS) + b"%d" % i + rnd.choice(_TLDS) for i in range(8000)})
    tail_weights = [1 / (i + 1) for i in range(len(tail))]
    out: list[bytes] = []
    total = 0
    while total < size:
        tops = rnd.choices(top_domains, top_weights, k=1000)
        tails = rnd.choices(tail, tail_weights, k=1000)
        for head, other in zip(tops, tails, strict=True):
            domain = head if rnd.random() < 0.5 else other
            if domain.startswith(b"http:"):
                url = domain
            elif rnd.random() < 0.03:
                url = b"http:%2F%2F" + domain
            else:
                path = (rnd.choice(paths) + rnd.choice(paths))[: rnd.randint(20, 150)]
                path = path.decode("utf-8", "ignore").encode()  # no character cut in two
                url = rnd.choice((b"http://", b"https://")) + domain + path
            line = b"%d\t%s\n" % (rnd.getrandbits(63), url)
            out.append(line)
            total += len(line)
    return b"".join(out)


def repeat_sample(size: int, seed: int = 1) -> bytes:
    """The 200 real ClickBench lines in random order with fresh ids, up to ``size`` bytes."""
    rnd = random.Random(seed)
    urls = [
        line.split(b"\t")[1]
        for line in (DATA / "clickbench-sample-200.tsv").read_bytes().splitlines()
    ]
    out: list[bytes] = []
    total = 0
    while total < size:
        line = b"%d\t%s\n" % (rnd.getrandbits(63), rnd.choice(urls))
        out.append(line)
        total += len(line)
    return b"".join(out)


SHAPES = [
    *(
        Shape(f"len{n}-d{d}", line=n, distinct=k)
        for n in (40, 60, 100, 300)
        for d, k in (("10", 10), ("3k", 3000), ("1m", 1_000_000))
    ),
    Shape("len60-noscheme50", line=60, no_scheme=0.5),
    Shape("len60-query50", line=60, query_sep=0.5),
    Shape("len60-other50", line=60, other_scheme=0.5),
    Shape("len60-crlf", line=60, crlf=True),
    Shape("short-logs", line=57, query_sep=0.5, other_scheme=0.5),
    Shape("short-logs-crlf", line=57, query_sep=0.5, other_scheme=0.5, crlf=True),
]
GENERATORS: dict[str, Callable[[int], bytes]] = {
    "generated": generate_log,  # the generator's log: the shape Tally was first tuned on
    "sample": repeat_sample,
    **{shape.name: (lambda size, shape=shape: generate_shape(shape, size)) for shape in SHAPES},
}
DESCRIPTIONS = {
    "generated": "the ~96 B/line generated log",
    "sample": "the 200 real lines, repeated",
    **{shape.name: shape.describe() for shape in SHAPES},
}
