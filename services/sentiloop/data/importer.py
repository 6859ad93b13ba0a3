"""Importing a user's labelled texts as a dataset (domain logic; no grpc here).

A file is CSV with a header naming ``text`` and ``label`` (UTF-8, quoted fields as the csv
module writes them, other columns ignored) or JSON Lines of ``{"text": ..., "label": ...}``.
Labels are positive / negative / neutral in any case. Everything is checked before anything
is written, and every problem of a file is reported at once with its line numbers, so a
failed import leaves nothing behind and one round of fixes is enough.

Without a given validation or test file the rows are split 70/15/15, stratified by label and
seeded (the same file always gives the same dataset), with near-duplicates (texts equal up
to case, punctuation and spacing) kept on one side so that no test text was seen in training.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sentiloop.core.errors import FailedPrecondition, InvalidArgument, NotFound
from sentiloop.core.objectstore import ObjectStore, check_key
from sentiloop.core.validation import quoted
from sentiloop.data import vader
from sentiloop.data.datasets import CHANNELS, StoredDataset, now, record_key, save_record

FORMATS = ("csv", "jsonl")
FRACTIONS = (0.7, 0.15, 0.15)
SEED = 13
LISTED = 10  # problems listed per kind; the rest are counted
MIN_TRAIN_PER_LABEL = 5  # and at least one in validation and in test
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


@dataclass(frozen=True)
class ImportFile:
    """One file's bytes and what to call it in messages."""

    content: bytes
    origin: str  # a file name or URI: shown in the dataset's source
    format: str = ""  # csv | jsonl | "" (from the origin's extension, else sniffed)


@dataclass(frozen=True)
class Row:
    line: int
    text: str
    label: str  # vader.LABELS spelling


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # per file
    max_text_length: int  # characters


def _format(file: ImportFile, text: str) -> str:
    if file.format:
        if file.format.lower() not in FORMATS:
            raise ValueError(f"format {quoted(file.format)} is not one of {', '.join(FORMATS)}")
        return file.format.lower()
    origin = file.origin.lower()
    if origin.endswith(".csv"):
        return "csv"
    if origin.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def _listed(lines: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:LISTED])
    more = f" and {len(lines) - LISTED} more" if len(lines) > LISTED else ""
    return f"{shown}{more}"


def _raw_rows(text: str, fmt: str) -> tuple[list[tuple[int, object, object]], list[str]]:
    """``(line, text, label)`` as found, and the problems that stop reading."""
    rows: list[tuple[int, object, object]] = []
    if fmt == "jsonl":
        broken: list[int] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                broken.append(number)
                continue
            if not isinstance(record, dict):
                broken.append(number)
                continue
            rows.append((number, record.get("text"), record.get("label")))
        if broken:
            return rows, [f"not a JSON object on line(s) {_listed(broken)}"]
        return rows, []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return [], ["is empty (a header line 'text,label' is required)"]
        columns = [name.strip().lower() for name in header]
        missing = [name for name in ("text", "label") if name not in columns]
        if missing:
            return [], [
                f"missing column(s) {', '.join(missing)}: the first line must be a header"
                f" naming text and label (it is {quoted(','.join(header))[:200]})"
            ]
        text_at, label_at = columns.index("text"), columns.index("label")
        start = reader.line_num + 1
        for record in reader:
            if any(field.strip() for field in record):
                text_value = record[text_at] if text_at < len(record) else None
                label_value = record[label_at] if label_at < len(record) else None
                rows.append((start, text_value, label_value))
            start = reader.line_num + 1
    except csv.Error as error:
        return rows, [f"is not valid CSV at line {reader.line_num}: {error}"]
    return rows, []


def parse(file: ImportFile, limits: Limits) -> list[Row]:
    """Every row of one file, validated; InvalidArgument lists all problems with lines."""
    problems: list[str] = []
    if len(file.content) > limits.max_bytes:
        raise InvalidArgument(
            {file.origin: f"is {len(file.content):,} bytes; the limit is {limits.max_bytes:,}"
             " (SENTILOOP_DATASET_MAX_BYTES)"}
        )  # fmt: skip
    try:
        text = file.content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = file.content[: error.start].count(b"\n") + 1
        raise InvalidArgument(
            {file.origin: f"is not UTF-8: byte 0x{file.content[error.start]:02x} on line {line}"
             " (save it as UTF-8)"}
        ) from None  # fmt: skip
    try:
        fmt = _format(file, text)
    except ValueError as error:
        raise InvalidArgument({file.origin: str(error)}) from None
    raw, problems = _raw_rows(text, fmt)
    unknown: list[str] = []
    empty: list[int] = []
    too_long: list[int] = []
    rows: list[Row] = []
    for line, text_value, label_value in raw:
        if not isinstance(text_value, str) or not text_value.strip():
            empty.append(line)
            continue
        if len(text_value) > limits.max_text_length:
            too_long.append(line)
            continue
        try:
            label = vader.canonical_label(label_value if isinstance(label_value, str) else "")
        except ValueError:
            unknown.append(f"line {line}: {quoted(str(label_value))[:60]}")
            continue
        rows.append(Row(line, text_value.strip(), label))
    if unknown:
        more = f" and {len(unknown) - LISTED} more" if len(unknown) > LISTED else ""
        problems.append(
            f"unknown label(s) (expected positive, negative or neutral, any case):"
            f" {'; '.join(unknown[:LISTED])}{more}"
        )
    if empty:
        problems.append(f"empty or missing text on line(s) {_listed(empty)}")
    if too_long:
        problems.append(
            f"text longer than {limits.max_text_length} characters on line(s) {_listed(too_long)}"
        )
    if not problems and not rows:
        problems.append("has no rows")
    if problems:
        raise InvalidArgument({file.origin: "; ".join(problems)})
    return rows


def collapse(rows: list[Row]) -> tuple[list[Row], dict[str, object]]:
    """One row per exact text, the latest label winning; reports what was collapsed."""
    latest: dict[str, Row] = {}
    labels: dict[str, set[str]] = defaultdict(set)
    lines: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        latest.pop(row.text, None)  # keep file order of the latest occurrence
        latest[row.text] = row
        labels[row.text].add(row.label)
        lines[row.text].append(row.line)
    conflicts = [text for text, seen in labels.items() if len(seen) > 1]
    report: dict[str, object] = {
        "rows_read": len(rows),
        "duplicates_collapsed": len(rows) - len(latest),
        "conflicting_texts": len(conflicts),
        "conflicts": [
            f"lines {', '.join(map(str, lines[t][:LISTED]))}: {quoted(t[:80])} labelled"
            f" {' / '.join(sorted(labels[t]))}; kept {latest[t].label}"
            for t in conflicts[:LISTED]
        ],
    }
    return list(latest.values()), report


def _near_duplicate_key(text: str) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def split(rows: list[Row]) -> dict[str, list[Row]]:
    """Stratified by label, seeded, near-duplicates together (see the module docstring)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[_near_duplicate_key(row.text)].append(row)
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        # A group goes with the label most of its texts carry (ties: the first row's).
        label = Counter(r.label for r in members).most_common(1)[0][0]
        by_label[label].append(key)
    out: dict[str, list[Row]] = {channel: [] for channel in CHANNELS}
    for _label, keys in sorted(by_label.items()):
        keys.sort(key=lambda key: (vader.seeded_hash(SEED, "split", key), key))
        total = sum(len(groups[key]) for key in keys)
        dealt = 0
        for key in keys:
            if dealt < FRACTIONS[0] * total:
                channel = "train"
            elif dealt < (FRACTIONS[0] + FRACTIONS[1]) * total:
                channel = "validation"
            else:
                channel = "test"
            out[channel].extend(groups[key])
            dealt += len(groups[key])
    return {
        channel: sorted(found, key=lambda r: (vader.seeded_hash(SEED, "order", r.text), r.text))
        for channel, found in out.items()
    }


def _check_counts(splits: dict[str, list[Row]]) -> dict[str, dict[str, int]]:
    counts = {
        channel: {label: 0 for label in vader.LABELS} for channel in CHANNELS
    }  # fmt: skip
    for channel, rows in splits.items():
        for row in rows:
            counts[channel][row.label] += 1
    short = [
        f"{label} has {counts['train'][label]} train / {counts['validation'][label]} validation"
        f" / {counts['test'][label]} test example(s)"
        for label in vader.LABELS
        if counts["train"][label] < MIN_TRAIN_PER_LABEL
        or counts["validation"][label] < 1
        or counts["test"][label] < 1
    ]
    if short:
        raise InvalidArgument(
            {"dataset": f"too few examples to train and test: {'; '.join(short)} (each label"
             f" needs at least {MIN_TRAIN_PER_LABEL} to train on and one each to validate and"
             " test; about 10 per label when the import splits the file itself)"}
        )  # fmt: skip
    return counts


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            {"name": f"{quoted(name)} must be 1-100 letters, digits, '.', '_', '-' or spaces,"
             " starting with a letter or digit"}
        )  # fmt: skip
    return name


def import_dataset(
    store: ObjectStore,
    name: str,
    files: dict[str, ImportFile],
    limits: Limits,
) -> tuple[StoredDataset, bool]:
    """Validates, splits (unless validation and test are given), stores; returns the dataset
    and whether this call created it (False: that content was imported before)."""
    check_name(name)
    unknown = sorted(set(files) - set(CHANNELS))
    if unknown or "train" not in files:
        raise InvalidArgument({"train": "a train file is required (and only train, validation"
                               " and test files)"})  # fmt: skip
    parsed: dict[str, list[Row]] = {}
    problems: dict[str, str] = {}
    for channel, file in files.items():
        try:
            parsed[channel] = parse(file, limits)
        except InvalidArgument as error:
            problems.update({f"{channel} ({k})": v for k, v in error.violations.items()})
    if problems:
        raise InvalidArgument(problems)
    report: dict[str, object] = {}
    collapsed: dict[str, list[Row]] = {}
    for channel, rows in parsed.items():
        collapsed[channel], found = collapse(rows)
        report[channel] = found
    if "validation" in files and "test" in files:
        splits = collapsed
        report["split"] = "as given"
    else:
        splits = split(collapsed["train"])
        for channel in ("validation", "test"):
            if channel in collapsed:  # a given one replaces its share; its rows go to train
                splits["train"] += splits[channel]
                splits[channel] = collapsed[channel]
        report["split"] = (
            "stratified by label, seed 13, near-duplicates together: "
            + "/".join(f"{round(f * 100)}" for f in FRACTIONS)
            + (" (given: " + ", ".join(c for c in ("validation", "test") if c in files) + ")"
               if len(files) > 1 else "")
        )  # fmt: skip
    counts = _check_counts(splits)
    data = {
        channel: vader.csv_bytes(vader.Example(r.text, r.label) for r in splits[channel])
        for channel in CHANNELS
    }
    content_hash = hashlib.sha256(b"".join(data[channel] for channel in CHANNELS)).hexdigest()
    if store.exists(record_key(content_hash)):
        return StoredDataset.from_json(store.get_bytes(record_key(content_hash))), False
    prefix = f"datasets/imported/{content_hash}"
    for channel in CHANNELS:
        store.put_bytes(f"{prefix}/{channel}/{channel}.csv", data[channel])
    dataset = StoredDataset(
        content_hash=content_hash,
        channels={channel: f"{prefix}/{channel}/" for channel in CHANNELS},
        counts=counts,
        name=name,
        kind="imported",
        source=", ".join(f"{channel}: {file.origin}" for channel, file in files.items()),
        created_at=now(),
        report=report,
    )
    return save_record(store, dataset), True


def read_source(store: ObjectStore, uri: str, fmt: str, limits: Limits) -> ImportFile:
    """A file named by ``s3://bucket/key`` (with the S3 object store) or by a key of the
    configured object store."""
    too_big = InvalidArgument(
        {uri: f"is over the limit of {limits.max_bytes:,} bytes (SENTILOOP_DATASET_MAX_BYTES)"}
    )
    if uri.startswith("s3://"):
        read_uri = getattr(store, "read_uri", None)
        if read_uri is None:
            raise FailedPrecondition(
                f"{uri}: s3:// URIs are read with the S3 object store (SENTILOOP_OBJECT_STORE=s3);"
                " this mesh stores objects locally: upload the file instead"
                " (sentiloop dataset import FILE)"
            )
        content = read_uri(uri, limits.max_bytes)
        if content is None:
            raise too_big
        return ImportFile(content, uri, fmt)
    if "://" in uri:
        raise InvalidArgument({"uri": f"{quoted(uri)}: only s3:// URIs and object-store keys"})
    try:
        key = check_key(uri)
    except (InvalidArgument, ValueError):
        raise InvalidArgument({"uri": f"{quoted(uri)} is not an object-store key"}) from None
    if not store.exists(key):
        raise NotFound(f"no object {key!r} in the object store")
    content = store.get_bytes(key)
    if len(content) > limits.max_bytes:
        raise too_big
    return ImportFile(content, key, fmt)
