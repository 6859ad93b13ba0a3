"""Which recent predictions to ask a labeller about: the labelling queue of
GET /feedback/requests (domain logic; no grpc here).

The queue is chosen from a window of the most recent predictions (recent traffic first:
what the model meets now, not what it met a month ago), and from those of them that have
no feedback yet:

* **Most uncertain first.** The default measure is the *margin*, one minus the gap between
  the two most likely labels' probabilities. With three labels it says how close the
  prediction was to coming out the other way, which is what a label can correct; entropy
  also rises when the probability left over is spread over the unlikely labels
  (0.5/0.25/0.25 is more "entropic" than 0.5/0.45/0.05, though the second is the closer
  call). Margin ("breaking ties") also did better than entropy as the query strategy for
  fine-tuned transformers in Schröder et al., *Revisiting uncertainty-based query
  strategies for active learning with transformers* (Findings of ACL 2022). Entropy,
  normalised to 0..1, can be asked for. Ties go to the more recent prediction.
* **Near-duplicates collapsed.** Texts are normalised (Unicode NFKC, case folded,
  punctuation and spacing collapsed); two predictions are near-duplicates when their
  normalised texts are equal or their token sets have a Jaccard similarity of at least
  0.8. A group is asked about once, through its most uncertain (then most recent) member,
  with the number of others it stands for; feedback on any member (or on the same text
  without a prediction id) answers the whole group.
* **Audit samples.** A share of the queue (``audit_share``) is drawn uniformly at random
  from the window's unlabelled predictions instead, whatever their uncertainty, and
  marked ``audit``: feedback that only ever answers what the model was unsure of, or what
  users chose to correct, tells nothing about the rest of the traffic. The number of
  audit samples is the share of the queue's length rounded at random (so a share of 0.1
  of a 5-long queue is one sample half of the time): the share holds on average for any
  length. Audit samples already handed out and not answered yet come back first (up to
  the share rounded up), so a queue that is asked for again (the console polls) keeps
  its samples instead of drawing new ones. They are spread through the queue, not put
  last, so that a labeller who answers only the first few still answers some.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sentiloop.core.errors import InvalidArgument

MARGIN = "margin"
ENTROPY = "entropy"
STRATEGIES = (MARGIN, ENTROPY)
DUPLICATE_JACCARD = 0.8
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_EPSILON = 1e-9
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Candidate:
    """A logged prediction that could be asked about."""

    prediction_id: str
    text: str
    label: str
    confidence: float
    scores: Mapping[str, float]
    model_version: str
    created_at: datetime


class RecentPredictions(Protocol):
    async def recent(self, limit: int) -> list[Candidate]:
        """The ``limit`` most recent predictions, newest first."""
        ...


@dataclass(frozen=True)
class LabelRequest:
    prediction: Candidate
    uncertainty: float
    audit: bool
    duplicates: int  # other unlabelled predictions of the window it stands for


@dataclass(frozen=True)
class Queue:
    requests: list[LabelRequest]
    strategy: str
    window: int  # predictions considered
    unlabelled: int  # of them, without feedback on them or on a near-duplicate


def margin_uncertainty(scores: Mapping[str, float]) -> float:
    """One minus the gap between the two highest probabilities, 0..1."""
    top = sorted(scores.values(), reverse=True)[:2]
    if not top:
        return 0.0
    gap = top[0] - (top[1] if len(top) > 1 else 0.0)
    return min(1.0, max(0.0, 1.0 - gap))


def entropy_uncertainty(scores: Mapping[str, float]) -> float:
    """The entropy of the probabilities over its maximum (log of the label count), 0..1."""
    if len(scores) < 2:
        return 0.0
    entropy = -sum(p * math.log(p) for p in scores.values() if p > 0)
    return min(1.0, max(0.0, entropy / math.log(len(scores))))


UNCERTAINTY = {MARGIN: margin_uncertainty, ENTROPY: entropy_uncertainty}


def normalise(text: str) -> str:
    """Case, punctuation and spacing folded away: "Great!!  phone" -> "great phone"."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", folded).strip()


def _jaccard_at_least(a: frozenset[str], b: frozenset[str], threshold: float) -> bool:
    common = len(a & b)
    return common >= threshold * (len(a) + len(b) - common) - _EPSILON


def group_near_duplicates(
    texts: Sequence[str], threshold: float = DUPLICATE_JACCARD
) -> list[list[int]]:
    """Groups the indices of ``texts`` whose normalised texts are equal or whose token sets
    have a Jaccard similarity of at least ``threshold`` with the group's first member.
    Groups and their members keep the order of ``texts``: each group's first index is its
    representative. Candidate groups are found through a prefix filter (tokens ordered
    rarest first: two sets that similar must share one of the first
    ``n - ceil(threshold * n) + 1``), so a window of thousands of texts is not compared
    pairwise."""
    keys = [normalise(text) or text.strip().casefold() for text in texts]
    token_sets = [frozenset(key.split()) for key in keys]
    frequency = Counter(token for tokens in token_sets for token in tokens)
    groups: list[list[int]] = []
    representatives: list[frozenset[str]] = []
    group_of_key: dict[str, int] = {}
    by_prefix_token: dict[str, list[int]] = defaultdict(list)
    for i, (key, tokens) in enumerate(zip(keys, token_sets, strict=True)):
        found = group_of_key.get(key)
        ordered = sorted(tokens, key=lambda token: (frequency[token], token))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered) - _EPSILON) + 1]
        if found is None and tokens:
            candidates = sorted({g for token in prefix for g in by_prefix_token[token]})
            found = next(
                (g for g in candidates if _jaccard_at_least(tokens, representatives[g], threshold)),
                None,
            )
        if found is None:
            found = len(groups)
            groups.append([])
            representatives.append(tokens)
            for token in prefix:
                by_prefix_token[token].append(found)
        groups[found].append(i)
        group_of_key.setdefault(key, found)
    return groups


def check_request(page_size: int, strategy: str) -> tuple[int, str]:
    """The request's page size (0: the default) and strategy ("": margin), checked."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument({"page_size": f"must be between 1 and {MAX_PAGE_SIZE}"})
    strategy = strategy.strip().lower() or MARGIN
    if strategy not in STRATEGIES:
        raise InvalidArgument({"strategy": f"{strategy!r} is not one of {', '.join(STRATEGIES)}"})
    return page_size or DEFAULT_PAGE_SIZE, strategy


def _spread(ranked: list[LabelRequest], audits: list[LabelRequest]) -> list[LabelRequest]:
    """The audit requests at evenly spaced places among the ranked ones (the j-th of k in
    the middle of the j-th k-th of the queue)."""
    if not audits:
        return ranked
    total = len(ranked) + len(audits)
    places = {((2 * j + 1) * total) // (2 * len(audits)): a for j, a in enumerate(audits)}
    rest = iter(ranked)
    return [places[i] if i in places else next(rest) for i in range(total)]


def build_queue(
    window: Sequence[Candidate],
    *,
    answered_ids: set[str],
    answered_texts: set[str],
    issued_audits: Sequence[str],
    page_size: int,
    audit_share: float,
    strategy: str,
    rng: random.Random,
) -> Queue:
    """The labelling queue of ``window`` (recent predictions, any order): at most
    ``page_size`` requests, the non-audit ones most uncertain first. ``answered_ids`` and
    ``answered_texts`` are the window's prediction ids and texts that have feedback;
    ``issued_audits`` the window's predictions handed out as audit samples before, first
    issued first. The audit requests returned are to be recorded as issued."""
    page_size, strategy = check_request(page_size, strategy)
    if not 0 <= audit_share <= 1:
        raise InvalidArgument({"audit_share": "must be between 0 and 1"})
    measure = UNCERTAINTY[strategy]
    uncertainty = {c.prediction_id: measure(c.scores) for c in window}
    ranked = sorted(
        window,
        key=lambda c: (-uncertainty[c.prediction_id], -c.created_at.timestamp(), c.prediction_id),
    )
    groups = [
        [ranked[i] for i in members] for members in group_near_duplicates([c.text for c in ranked])
    ]
    open_groups = [
        g
        for g in groups
        if not any(c.prediction_id in answered_ids or c.text in answered_texts for c in g)
    ]
    group_of = {c.prediction_id: n for n, g in enumerate(open_groups) for c in g}
    eligible = [c for g in open_groups for c in g]
    length = min(page_size, len(open_groups))
    wanted = min(length, math.floor(length * audit_share + rng.random()))

    by_id = {c.prediction_id: c for c in eligible}
    issued = [by_id[i] for i in dict.fromkeys(issued_audits) if i in by_id]
    # Samples handed out and not answered yet come back up to the share rounded up, even
    # when this call's random rounding wants fewer: a labeller finds again what it was
    # shown (the console polls). Rounding at random decides only when fresh ones are drawn.
    audits = issued[: max(wanted, math.ceil(length * audit_share))]
    # Outstanding samples also stand for the random part of the share: with some handed
    # out, fresh ones are drawn only to reach its whole part, so a poll does not add one.
    target = max(len(audits), math.floor(length * audit_share)) if issued else wanted
    if len(audits) < target:
        handed_out = {c.prediction_id for c in issued}
        fresh = [c for c in eligible if c.prediction_id not in handed_out]
        audits += rng.sample(fresh, min(target - len(audits), len(fresh)))
    # A group one of its members was handed out for as an audit sample is that sample's.
    taken = {group_of[c.prediction_id] for c in issued + audits}
    chosen = [g for n, g in enumerate(open_groups) if n not in taken][: length - len(audits)]

    def request(candidate: Candidate, audit: bool) -> LabelRequest:
        return LabelRequest(
            prediction=candidate,
            uncertainty=uncertainty[candidate.prediction_id],
            audit=audit,
            duplicates=len(open_groups[group_of[candidate.prediction_id]]) - 1,
        )

    requests = _spread([request(g[0], False) for g in chosen], [request(c, True) for c in audits])
    return Queue(requests=requests, strategy=strategy, window=len(window), unlabelled=len(eligible))
