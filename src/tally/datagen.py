"""Synthetic ClickBench-style web-request logs: the input of Tally's reference job.

A data set is ``part-00000.tsv``, ``part-00001.tsv``, ... plus ``filelist.csv`` listing them as
``file://`` URLs. Each partition holds lines ``<id>\\t<url>\\n`` and ends at a line boundary.

Content (fractions are of the lines of each partition):

- ``TOP_SHARE`` (45 %) of the lines belong to the 25 domains of the published ClickBench top 25,
  in the published ratios. Their counts are apportioned (not sampled, see :func:`top_counts`) so
  that partitions ``0 .. P-1`` list exactly the published top 25 in the published order. The top
  25 need about 150 lines, so a partition is never smaller than about 15 KB.
- The rest is a long tail of ``TAIL_DOMAINS`` (20,000) domains with Zipf-like weights
  ``1 / (rank + 50)``, the most frequent of them well below the 25th published domain.
- URLs follow the real sample: ``http://`` (75 %) and ``https://`` (25 %) with paths and query
  strings, Cyrillic text in UTF-8, raw spaces and ``"`` characters, percent-encoding, ``www.``
  and city subdomains, query-like domains (``state=19945206``), Cyrillic domains, and
  percent-encoded URLs without ``://`` (``http:%2F%2Fwwww.ukr``) whose whole text is the domain.
- ``MALFORMED_FRACTION`` (0.01 %, rounded up; none in partitions under 100 lines) of the lines are
  malformed, cycling through three kinds: no tab, empty URL, empty domain (``http:///x``).
- ``CRLF_FRACTION`` (0.1 %, sampled) of the lines end in ``\\r\\n`` instead of ``\\n``.
- Ids are random 19-digit positive integers below 2**63.

Partition ``i`` depends only on ``(seed, i, partition_size)``, so partitions are generated in
parallel and the output is byte-identical for any number of workers. Lines are drawn with NumPy
and assembled from pre-rendered pieces (id, scheme and domain, path and ending) by ``bytes.join``.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from tally.errors import ConfigError, TallyError

__all__ = ["PUBLISHED_TOP25", "generate", "parse_size"]

# The published top 25 of the full ClickBench data set (domain, count).
PUBLISHED_TOP25: tuple[tuple[str, int], ...] = (
    ("go.mail", 1050248), ("smeshariki.ru", 811723), ("yandex.ru", 565057),
    ("video.yandex.ru", 404274), ("google.com", 402441), ("irr.ru", 358203),
    ("google.ru", 275832), ("bdsmpeople.ru", 232969), ("auto.ria.ua", 157332),
    ("bonprix.ru", 139743), ("e96.ru", 124993), ("mysw.info", 123756),
    ("kirov.irr.ru", 120383), ("state=19945206", 95363), ("новострашная", 94908),
    ("kinopoisk.ru", 93444), ("holodilnik.ru", 88481), ("rashbox.ru", 88461),
    ("wildberries.ru", 83879), ("kirov.ria.ua", 75758), ("http:%2F%2Fwwww.ukr", 71403),
    ("diary.ru", 71030), ("tambov.irr.ru", 62320), ("svpress.ru", 59743), ("vk.com", 57739),
)  # fmt: skip

TOP_SHARE = 0.45
TAIL_DOMAINS = 20_000
TAIL_RANK_OFFSET = 50
HTTPS_SHARE = 0.25
MALFORMED_FRACTION = 1e-4
CRLF_FRACTION = 1e-3
TAILS = 4096  # distinct path-and-query strings
ID_WIDTH = 20  # 19 digits and a tab
CHUNK_LINES = 8192  # lines rendered at a time

FILELIST = "filelist.csv"
_PARTITION_RE = re.compile(r"part-(\d{5,})\.tsv")
_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})

ObjArray = npt.NDArray[np.object_]


def parse_size(text: str) -> int:
    """Bytes in a size like ``"32MiB"``, ``"4MB"``, ``"512KiB"`` or ``"1000"``, any case."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ConfigError(f"bad size {text!r}: expected a number with an optional unit like 32MiB")
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "b").lower()]


# --- vocabulary: the domains and paths every partition draws from ------------------------------

# fmt: off
_LATIN = (
    "ka", "ri", "mo", "na", "lo", "ve", "pi", "ter", "bur", "go", "zo", "ne", "do", "ma", "sha",
    "ru", "ki", "ro", "tu", "vi", "li", "so", "pe", "da", "mi", "ko", "la", "ba", "av", "to",
    "kin", "fo", "me", "di", "al", "pa", "ser", "vis", "ws", "sho", "pla", "net", "ux", "rt",
)
_CYRILLIC = (
    "но", "во", "стра", "шна", "я", "зе", "лен", "кий", "мо", "ск", "ва", "ра", "бо", "та",
    "до", "ки", "де", "ти", "сад", "по", "го", "да", "ре", "чи", "ль",
)
_TLDS = (".ru",) * 8 + (".com", ".ua", ".info", ".net", ".org", ".su", ".by", ".kz", ".рф")
_SUBDOMAINS = (
    "www.", "www.", "www.", "m.", "kirov.", "tambov.", "spb.", "msk.", "ekb.", "video.",
    "mail.", "forum.", "my.", "news.",
)
_PARENTS = ("irr.ru", "ria.ua", "yandex.ru", "diary.ru", "mail.ru", "google.ru", "livejournal.com")
_WORDS = (
    "как", "своими", "русские", "текста", "свадебные", "мега", "смотреть", "фильмы", "билет",
    "погода", "купить", "квартиру", "москва", "работа", "отзывы", "скачать", "бесплатно",
    "новости", "игры", "одноклассники", "самсунг", "мультики", "платья", "джем", "ложка",
)
_PATH_WORDS = (
    "search", "folders", "page.aspx", "catalog", "women.asp", "yandex.php", "jobs-educations",
    "user", "hotel", "foto-4", "login", "cars", "composition.php", "topic", "news",
    "GameMain.aspx", "index.php", "video", "messages", "forum", "viewtopic.php", "photo",
    "albums", "region", "doc", "cart", "sale", "detail", "yandsearch", "list.html", "online",
)
_KEYS = (
    "lr", "sort", "currency", "cad", "bvm", "ved", "ei", "sa", "rct", "clid", "msid", "page",
    "id", "p", "from", "where", "esrc", "price_ot", "price_do", "input_age1", "state",
)
# fmt: on


def _latin_name(rnd: random.Random) -> str:
    return "".join(rnd.choice(_LATIN) for _ in range(rnd.randint(2, 4)))


def _query(rnd: random.Random, parts: int, slashes: bool = True) -> str:
    """Query-string pieces joined by ``&``: Cyrillic text, raw quotes, percent-encoding, noise."""
    out = []
    for _ in range(parts):
        kind = rnd.random()
        if kind < 0.3:
            words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 3)))
            out.append(f'text="{words}"' if rnd.random() < 0.1 else f"text={words}")
        elif kind < 0.4:
            out.append("text=" + quote(rnd.choice(_WORDS)))
        elif kind < 0.5 and slashes:
            out.append(f"url=http://{_latin_name(rnd)}.ru%2F{rnd.choice(_PATH_WORDS)}")
        else:
            value = "".join(
                rnd.choice("0123456789abcdefABCDEF_-") for _ in range(rnd.randint(1, 14))
            )
            out.append(f"{rnd.choice(_KEYS)}={value}")
    return "&".join(out)


def _tail_domain(rnd: random.Random) -> str:
    """One long-tail domain in one of the shapes seen in the real sample."""
    kind = rnd.random()
    if kind < 0.50:
        sub = rnd.choice(_SUBDOMAINS) if rnd.random() < 0.3 else ""
        return sub + _latin_name(rnd) + rnd.choice(_TLDS)
    if kind < 0.60:
        return f"{_latin_name(rnd)}.{rnd.choice(_PARENTS)}"
    if kind < 0.72:
        name = "".join(rnd.choice(_CYRILLIC) for _ in range(rnd.randint(2, 5)))
        return name + (".рф" if rnd.random() < 0.3 else "")
    if kind < 0.80:
        return f"{rnd.choice(['state', 'marka', 'yurgid', 'price_ot'])}={rnd.randrange(10**8)}"
    if kind < 0.88:
        query = _query(rnd, rnd.randint(1, 3), slashes=False)
        return f"{_latin_name(rnd)}{rnd.choice(['.ru', ''])}&{query}"
    if kind < 0.90:
        return f'{_latin_name(rnd)}.ru"{rnd.choice(_WORDS)}"'
    # A percent-encoded URL without "://": the whole text is the domain.
    host = ("wwww." if rnd.random() < 0.5 else "") + _latin_name(rnd)
    path = "%2F" + rnd.choice(_PATH_WORDS) if rnd.random() < 0.5 else ""
    return f"{rnd.choice(['http:', 'https:'])}%2F%2F{host}{path}"


def _path(rnd: random.Random) -> str:
    """A path and query string, empty or starting with ``/`` so it never changes the domain."""
    if rnd.random() < 0.1:
        return rnd.choice(["", "/"])
    segments = rnd.randint(1, 3)
    path = "".join("/" + rnd.choice(_PATH_WORDS) for _ in range(segments))
    if rnd.random() < 0.3:
        path += f"/{rnd.randrange(10 ** rnd.randint(1, 9))}"
    if rnd.random() < 0.75:
        path += rnd.choice("?&") + _query(rnd, min(30, 1 + int(rnd.expovariate(0.5))))
    return path


def _is_bare(domain: str) -> bool:
    return domain.startswith(("http:%2F", "https:%2F"))


@dataclass(frozen=True)
class Vocabulary:
    """Pre-rendered pieces; domain ``d < 25`` is the ``d``-th published top domain."""

    prefixes: ObjArray  # (domains, 2): "http://" / "https://" + domain; a bare URL as is
    bare: npt.NDArray[np.bool_]  # the URL is the domain itself and takes no path
    tails: ObjArray  # (TAILS, 2): path ending "\n" / "\r\n"; row 0 is the empty path
    tail_len: npt.NDArray[np.int64]  # bytes of each path with its "\n"
    tail_cdf: npt.NDArray[np.float64]  # cumulative weights of the long-tail domains
    mean_prefix: float  # expected bytes of scheme and domain per line
    bare_share: float  # expected share of lines with a bare URL

    @property
    def mean_line(self) -> float:
        return float(self.line_len(np.arange(TAILS)).mean())

    def line_len(self, path: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Expected bytes of lines with these paths (their domains not drawn yet)."""
        length = ID_WIDTH + self.mean_prefix + (1 - self.bare_share) * self.tail_len[path]
        return length.astype(np.float64)


def build_vocabulary(seed: int) -> Vocabulary:
    """The domains and paths for ``seed`` (the same in every process)."""
    rnd = random.Random(f"tally-datagen-vocabulary-{seed}")
    top = [name for name, _ in PUBLISHED_TOP25]
    seen = set(top)
    domains = list(top)
    while len(domains) < len(top) + TAIL_DOMAINS:
        name = _tail_domain(rnd)
        if name not in seen:
            seen.add(name)
            domains.append(name)
    for name in domains:
        bad = "/" in name if not _is_bare(name) else "://" in name
        assert name and not bad and not set(name) & set("\t\r\n"), name

    bare = np.array([_is_bare(d) for d in domains])
    encoded = [d.encode() for d in domains]
    prefixes = np.empty((len(domains), 2), dtype=object)
    prefixes[:, 0] = [d if b else b"http://" + d for d, b in zip(encoded, bare, strict=True)]
    prefixes[:, 1] = [d if b else b"https://" + d for d, b in zip(encoded, bare, strict=True)]

    paths = [b""] + [_path(rnd).encode() for _ in range(TAILS - 1)]
    tails = np.empty((TAILS, 2), dtype=object)
    tails[:, 0] = [p + b"\n" for p in paths]
    tails[:, 1] = [p + b"\r\n" for p in paths]
    tail_len = np.array([len(p) + 1 for p in paths], dtype=np.int64)

    tail_weights = 1.0 / (np.arange(1, TAIL_DOMAINS + 1) + TAIL_RANK_OFFSET)
    tail_cdf = np.cumsum(tail_weights / tail_weights.sum())
    tail_cdf[-1] = 1.0
    weights = np.concatenate(
        [TOP_SHARE * _PUBLISHED, (1 - TOP_SHARE) * np.diff(tail_cdf, prepend=0)]
    )
    prefix_len = np.array([len(p) for p in prefixes[:, 0]]) + HTTPS_SHARE * ~bare
    mean_prefix = float(weights @ prefix_len) + CRLF_FRACTION
    return Vocabulary(prefixes, bare, tails, tail_len, tail_cdf, mean_prefix, float(weights @ bare))


# --- partitions ----------------------------------------------------------------------------

_PUBLISHED = np.array([count for _, count in PUBLISHED_TOP25], dtype=np.float64)
_PUBLISHED /= _PUBLISHED.sum()


def top_counts(lines: int, index: int) -> npt.NDArray[np.int64]:
    """Lines per top domain in partition ``index``, for partitions of about ``lines`` lines.

    Quotas follow the published ratios. A tie in the output is ordered by domain bytes; where
    that would swap two neighbours, the quota of the first is raised to at least one line above
    the second (this matters for small partitions only). Rounding is cumulative: partitions
    ``0 .. P-1`` together hold exactly ``floor(P * quota)`` lines of each top domain.
    """
    quotas = lines * TOP_SHARE * _PUBLISHED
    names = [name.encode() for name, _ in PUBLISHED_TOP25]
    for k in range(len(quotas) - 2, -1, -1):
        gap = 1.0 if names[k] > names[k + 1] else 0.0
        quotas[k] = max(quotas[k], quotas[k + 1] + gap)
    counts = np.floor(quotas * (index + 1)) - np.floor(quotas * index)
    return counts.astype(np.int64)


def iter_partition(
    vocab: Vocabulary, seed: int, index: int, partition_size: int
) -> Iterator[bytes]:
    """The bytes of partition ``index`` in chunks: a function of ``(seed, index, partition_size)``.

    Chunks of ``CHUNK_LINES`` lines keep allocations small enough for the allocator to reuse.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, partition_size]))
    nominal = max(1, round(partition_size / vocab.mean_line))
    top = top_counts(nominal, index)
    # Paths, schemes and endings first: the line count is where their expected length
    # reaches the partition size.
    spare = nominal + nominal // 4 + 64
    path = rng.integers(0, TAILS, size=spare)
    https = (rng.random(spare) < HTTPS_SHARE).astype(np.intp)
    crlf = (rng.random(spare) < CRLF_FRACTION).astype(np.intp)
    ends = np.cumsum(vocab.line_len(path))
    n = min(spare, int(np.searchsorted(ends, partition_size)) + 1)
    n_bad = math.ceil(n * MALFORMED_FRACTION) if n >= 100 else 0
    n = max(n, int(top.sum()) + n_bad)
    n_tail = n - int(top.sum()) - n_bad

    domain = np.empty(n, dtype=np.int64)
    domain[: n - n_tail - n_bad] = np.repeat(np.arange(len(top)), top)
    tail_draw = np.searchsorted(vocab.tail_cdf, rng.random(n_tail), side="right")
    domain[n - n_tail - n_bad : n - n_bad] = len(top) + tail_draw
    domain[n - n_bad :] = -1  # malformed, rendered below
    rng.shuffle(domain)
    bad_rows = np.flatnonzero(domain < 0).tolist()
    path[:n][vocab.bare[np.maximum(domain, 0)]] = 0

    for start in range(0, n, CHUNK_LINES):
        stop = min(n, start + CHUNK_LINES)
        m = stop - start
        digits = rng.integers(0, 10, size=(m, ID_WIDTH), dtype=np.uint8)
        digits[:, 0] = rng.integers(1, 9, size=m, dtype=np.uint8)  # first digit 1-8: < 2**63
        digits += ord("0")
        digits[:, -1] = ord("\t")
        ids: list[bytes] = digits.view(f"S{ID_WIDTH}").ravel().tolist()
        good = np.maximum(domain[start:stop], 0)
        prefixes: list[bytes] = vocab.prefixes[good, https[start:stop]].tolist()
        tails: list[bytes] = vocab.tails[path[start:stop], crlf[start:stop]].tolist()

        for kind, row in enumerate(bad_rows):
            i = row - start
            if not 0 <= i < m:
                continue
            if kind % 3 == 0:  # no tab
                ids[i], prefixes[i], tails[i] = ids[i][:-1], b"", b"\n"
            elif kind % 3 == 1:  # empty URL
                prefixes[i], tails[i] = b"", b"\n"
            else:  # empty domain
                prefixes[i], tails[i] = b"http:///x", b"\n"

        pieces: list[bytes] = [b""] * (3 * m)
        pieces[0::3] = ids
        pieces[1::3] = prefixes
        pieces[2::3] = tails
        yield b"".join(pieces)


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Write via a temporary file and a rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_worker_vocab: Vocabulary | None = None


def _init_worker(vocab: Vocabulary) -> None:
    global _worker_vocab
    _worker_vocab = vocab


def _write_partition(
    vocab: Vocabulary, out_dir: Path, seed: int, index: int, partition_size: int
) -> Path:
    path = out_dir / f"part-{index:05d}.tsv"
    _write_atomic(path, iter_partition(vocab, seed, index, partition_size))
    return path


def _write_partition_in_worker(job: tuple[Path, int, int, int]) -> Path:
    assert _worker_vocab is not None
    return _write_partition(_worker_vocab, *job)


def generate(
    out_dir: str | Path,
    partitions: int,
    partition_size: int,
    seed: int,
    workers: int | None = None,
) -> list[Path]:
    """Write ``partitions`` partitions of about ``partition_size`` bytes and ``filelist.csv``;
    return the partition paths in order. A data set generated into ``out_dir`` before is
    replaced: partitions beyond the new count are removed (files named ``part-NNNNN.tsv``;
    other files are left alone). ``workers`` processes (default: one per CPU) write
    partitions in parallel; the bytes do not depend on it.
    """
    if partitions < 1:
        raise ConfigError(f"partitions must be at least 1, not {partitions}")
    if partition_size < 1:
        raise ConfigError(f"partition size must be at least 1 byte, not {partition_size}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, not {seed}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")

    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot generate into {out_dir}: it is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {out_dir}: {exc.strerror}") from exc
    vocab = build_vocabulary(seed)
    jobs = [(out, seed, index, partition_size) for index in range(partitions)]
    workers = min(workers, partitions)
    try:
        if workers == 1:
            paths = [_write_partition(vocab, *job) for job in jobs]
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(vocab,)) as pool:
                paths = list(pool.map(_write_partition_in_worker, jobs))
        for entry in out.iterdir():  # an earlier data set's partitions beyond the new count
            match = _PARTITION_RE.fullmatch(entry.name)
            if match and int(match[1]) >= partitions and entry.is_file():
                entry.unlink()
        listing = "".join(path.as_uri() + "\n" for path in paths)
        _write_atomic(out / FILELIST, [listing.encode()])
    except OSError as exc:
        raise TallyError(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
    return paths


def foreign_files(out: Path) -> list[str]:
    """Files in ``out`` that :func:`generate` did not write but a folder source would read."""
    return sorted(
        entry.name
        for entry in out.iterdir()
        if entry.is_file()
        and not entry.name.startswith((".", "_"))
        and entry.name != FILELIST
        and not _PARTITION_RE.fullmatch(entry.name)
    )
