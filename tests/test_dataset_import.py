"""Importing a user's labelled file (sentiloop.data.importer) against the real local object
store: what is accepted, every validation error with its lines, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentiloop.core.errors import FailedPrecondition, InvalidArgument, NotFound
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.data import importer
from sentiloop.data.datasets import get_dataset, lineage_dataset, list_datasets
from sentiloop.data.importer import ImportFile, Limits

LIMITS = Limits(max_bytes=100_000, max_text_length=200)
WORDS = {"Positive": "lovely", "Negative": "awful", "Neutral": "ordinary"}


def rows(per_label: int = 20) -> list[tuple[str, str]]:
    return [
        (f"an {WORDS[label]} thing number {i}", label) for i in range(per_label) for label in WORDS
    ]


def csv_file(pairs: list[tuple[str, str]], header: str = "text,label") -> bytes:
    lines = [header] + [f'"{text}",{label}' for text, label in pairs]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def nothing_stored(store: LocalObjectStore) -> bool:
    return not list_datasets(store) and not store.list("datasets/imported/")


def test_a_csv_is_split_stratified_deterministic_and_stored_once(store: LocalObjectStore) -> None:
    content = b"\xef\xbb\xbf" + csv_file([(t, label.upper()) for t, label in rows()])
    dataset, created = importer.import_dataset(
        store, "mine", {"train": ImportFile(content, "train_data.csv")}, LIMITS
    )
    assert created and dataset.kind == "imported" and dataset.name == "mine"
    assert dataset.source == "train: train_data.csv"
    # 20 per label dealt 70/15/15 within each label.
    for label in WORDS:
        assert [dataset.counts[c][label] for c in ("train", "validation", "test")] == [14, 3, 3]
    train = store.get_bytes(dataset.channels["train"] + "train.csv").decode()
    assert train.splitlines()[0] == "text,label" and "Positive" in train
    again, created_again = importer.import_dataset(
        store, "other name", {"train": ImportFile(content, "copy.csv")}, LIMITS
    )
    assert not created_again and again.content_hash == dataset.content_hash
    assert [d.content_hash for d in list_datasets(store)] == [dataset.content_hash]
    assert get_dataset(store, dataset.content_hash[:8]) == dataset
    assert lineage_dataset(store, dataset.content_hash) == dataset


def test_json_lines_and_given_splits(store: LocalObjectStore) -> None:
    def jsonl(pairs: list[tuple[str, str]]) -> bytes:
        return "".join(
            json.dumps({"text": t, "label": label}) + "\n" for t, label in pairs
        ).encode()

    files = {
        "train": ImportFile(jsonl(rows(6)), "train.jsonl"),
        "validation": ImportFile(csv_file([(f"v{t}", label) for t, label in rows(1)]), "v.csv"),
        "test": ImportFile(jsonl([(f"t{t}", label) for t, label in rows(2)]), "test", "jsonl"),
    }
    dataset, _ = importer.import_dataset(store, "given", files, LIMITS)
    assert dataset.report["split"] == "as given"
    assert {c: sum(n.values()) for c, n in dataset.counts.items()} == {
        "train": 18, "validation": 3, "test": 6
    }  # fmt: skip


def test_duplicates_collapse_to_the_latest_label_and_conflicts_are_reported(
    store: LocalObjectStore,
) -> None:
    pairs = [
        *rows(),
        ("an awful thing number 3", "Positive"),
        ("an lovely thing number 0", "Positive"),
    ]
    dataset, _ = importer.import_dataset(
        store, "dups", {"train": ImportFile(csv_file(pairs), "d.csv")}, LIMITS
    )
    report = dataset.report["train"]
    assert report["rows_read"] == 62 and report["duplicates_collapsed"] == 2
    assert report["conflicting_texts"] == 1
    assert "lines 12, 62" in report["conflicts"][0] and "kept Positive" in report["conflicts"][0]
    assert sum(sum(n.values()) for n in dataset.counts.values()) == 60
    assert dataset.counts["train"]["Positive"] + dataset.counts["validation"]["Positive"] + (
        dataset.counts["test"]["Positive"]
    ) == 21  # fmt: skip


def test_near_duplicates_stay_on_one_side(store: LocalObjectStore) -> None:
    pairs = rows() + [(f"AN {WORDS[label].upper()} THING, NUMBER {i}!", label) for t, label in
                      rows()[:30] for i in [int(t.rsplit(" ", 1)[1])]]  # fmt: skip
    dataset, _ = importer.import_dataset(
        store, "near", {"train": ImportFile(csv_file(pairs), "n.csv")}, LIMITS
    )
    side: dict[str, str] = {}
    for channel in ("train", "validation", "test"):
        content = store.get_bytes(dataset.channels[channel] + f"{channel}.csv").decode()
        for line in content.splitlines()[1:]:
            key = importer._near_duplicate_key(line.rsplit(",", 1)[0].strip('"'))
            assert side.setdefault(key, channel) == channel, f"{key!r} on two sides"
    assert len(side) == 60


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"words,sentiment\nnice,positive\n", "missing column(s) text, label"),
        (
            csv_file(rows(4)[:3] + [(f"t{i}", "good") for i in range(12)]),
            "unknown label(s) (expected positive, negative or neutral, any case): line 5: 'good';"
            " line 6: 'good'",
        ),
        (
            csv_file([*rows(4)[:3], (" ", "Positive"), ("", "Neutral")]),
            "empty or missing text on line(s) 5, 6",
        ),
        (csv_file([("x" * 201, "Positive")]), "text longer than 200 characters on line(s) 2"),
        (b'text,label\n"caf\xe9",positive\n', "is not UTF-8: byte 0xe9 on line 2"),
        (b'{"text": "ok", "label": "positive"}\nnot json\n', "not a JSON object on line(s) 2"),
        (b"text,label\n", "has no rows"),
        (b"x" * 100_001, "is 100,001 bytes; the limit is 100,000"),
    ],
)
def test_every_validation_error_names_its_lines_and_stores_nothing(
    store: LocalObjectStore, content: bytes, expected: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        importer.import_dataset(store, "bad", {"train": ImportFile(content, "upload")}, LIMITS)
    assert expected in caught.value.message, caught.value.message
    assert "train (upload)" in caught.value.violations
    assert nothing_stored(store)


def test_unknown_labels_list_the_first_ten_and_count_the_rest(store: LocalObjectStore) -> None:
    content = csv_file(rows(4) + [(f"t{i}", f"bad{i}") for i in range(13)])
    with pytest.raises(InvalidArgument) as caught:
        importer.import_dataset(store, "bad", {"train": ImportFile(content, "f.csv")}, LIMITS)
    message = caught.value.message
    assert "line 14: 'bad0'" in message and "line 23: 'bad9'" in message
    assert "'bad10'" not in message and "and 3 more" in message


def test_a_class_too_small_to_train_and_test_is_refused(store: LocalObjectStore) -> None:
    pairs = [p for p in rows() if p[1] != "Neutral"] + [("plain", "Neutral"), ("so so", "neutral")]
    with pytest.raises(InvalidArgument) as caught:
        importer.import_dataset(
            store, "small", {"train": ImportFile(csv_file(pairs), "s.csv")}, LIMITS
        )
    assert "too few examples to train and test: Neutral has" in caught.value.message
    assert nothing_stored(store)


def test_sources_keys_of_the_store_and_their_errors(store: LocalObjectStore) -> None:
    store.put_bytes("uploads/train_data.csv", csv_file(rows()))
    file = importer.read_source(store, "uploads/train_data.csv", "", LIMITS)
    assert file.origin == "uploads/train_data.csv" and file.content == csv_file(rows())
    with pytest.raises(NotFound):
        importer.read_source(store, "uploads/missing.csv", "", LIMITS)
    with pytest.raises(InvalidArgument):
        importer.read_source(store, "../etc/passwd", "", LIMITS)
    with pytest.raises(InvalidArgument):
        importer.read_source(store, "https://example.com/x.csv", "", LIMITS)
    with pytest.raises(FailedPrecondition, match="SENTILOOP_OBJECT_STORE=s3"):
        importer.read_source(store, "s3://bucket/train_data.csv", "", LIMITS)


def test_names_and_ids_are_checked(store: LocalObjectStore) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        importer.import_dataset(store, "../x", {"train": ImportFile(csv_file(rows()), "f")}, LIMITS)
    with pytest.raises(InvalidArgument, match="not a dataset id"):
        get_dataset(store, "abc")
    with pytest.raises(NotFound):
        get_dataset(store, "0123456789abcdef")


def test_snapshots_no_version_references_are_pruned(store: LocalObjectStore) -> None:
    from sentiloop.data.datasets import ensure_dataset, get_dataset, prune_snapshots
    from sentiloop.retraining.snapshot import build_snapshot

    base = ensure_dataset(store)
    snapshots = [
        build_snapshot(
            store,
            base,
            json.dumps({"text": f"feedback {i}", "user_label": "positive"}).encode() + b"\n",
        )
        for i in range(3)
    ]
    kept = snapshots[1].content_hash
    deleted = prune_snapshots(store, {base.content_hash, kept})
    assert sorted(deleted) == sorted(s.content_hash for s in (snapshots[0], snapshots[2]))
    for gone in (snapshots[0], snapshots[2]):
        assert not store.list(gone.channels["train"])
        with pytest.raises(NotFound):
            get_dataset(store, gone.content_hash)
    assert store.list(snapshots[1].channels["train"])
    assert lineage_dataset(store, kept) == base  # the kept one still leads to its base
    assert store.exists(base.channels["test"] + "test.csv")  # the base is never touched
    assert prune_snapshots(store, {base.content_hash, kept}) == []
