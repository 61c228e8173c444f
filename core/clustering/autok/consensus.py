"""Censoring of votes at the bounds of [k_min, k_max], and the consensus over the rest.

An estimator searches only [k_min, k_max]. When its answer sits on a bound it has not said "K is
that bound", it has said "K is that bound or beyond": the estimator was cut off (x-means and
g-means still wanted to split at k_max; the silhouette or eigengap curve peaks at its last point;
DP-means' counts over the lambda grid all lie outside the range). In practice a vote at k_max is
almost always the estimator's model failing on the data (x-means' identical spherical Gaussians and
g-means' normality test split non-Gaussian clusters without end in many dimensions), so it carries
no information about K. Such a vote is *censored* and abstains:

upper  the vote is k_max, except for x-means/g-means that reached k_max and then wanted no further
       split (those converged there: a genuine vote for k_max).
lower  the vote is k_min and k_min > 2 (with k_min = 2 the estimator answered the smallest count a
       job accepts, not a truncated one); for DP-means also a grid whose counts all fall below k_min.

The consensus is ``spec.consensus`` (median: the lower median; mode: the most frequent vote, ties
by the lower median of the tied values) over the uncensored votes. When every vote is censored the
rule falls back to the same consensus over all clipped votes (K then sits at a bound: the result
says so, and the range should be widened). ``legacy`` reproduces the rule before censoring: the
consensus over all clipped votes, always.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.clustering.autok._common import K_FLOOR


@dataclass
class Vote:
    """One estimator's answer. raw: its own count (x-means/g-means and DP-means may exceed the
    range); vote: raw clipped to [k_min, k_max]; censored: None, "upper" or "lower"; reason: why."""

    name: str
    raw: int
    vote: int
    censored: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "vote": self.vote, "censored": self.censored, "reason": self.reason}


def censor(name: str, k: int, info: dict[str, Any], k_min: int, k_max: int) -> Vote:
    """The Vote of estimator ``name`` that answered k with facts ``info`` (module docstring)."""
    raw = int(info.get("raw_k", k))
    vote = min(max(int(k), k_min), k_max)
    v = Vote(name, raw, vote)
    if name in ("xmeans", "gmeans") and vote >= k_max:
        if info.get("stopped") != "converged":
            v.censored, v.reason = "upper", f"stopped at k_max={k_max} while still splitting"
    elif vote >= k_max and (name != "dpmeans" or raw >= k_max):
        v.censored = "upper"
        v.reason = f"best at the last k of the range (k_max={k_max}); raw count {raw}"
    if v.censored is None and vote <= k_min and (k_min > K_FLOOR or raw < k_min):
        v.censored = "lower"
        v.reason = f"best at the first k of the range (k_min={k_min}); raw count {raw}"
    return v


def consensus_vote(votes: list[int], how: str = "median") -> int:
    """median: the lower median of ``votes``; mode: the most frequent vote, ties by the lower median
    of the tied values."""
    if not votes:
        raise ValueError("no votes")
    if how == "mode":
        counts = Counter(votes)
        top = max(counts.values())
        votes = [v for v in counts if counts[v] == top]
    elif how != "median":
        raise ValueError(f"unknown consensus {how!r}")
    ordered = sorted(votes)
    return ordered[(len(ordered) - 1) // 2]


def decide(votes: list[Vote], how: str = "median") -> tuple[int, dict[str, Any]]:
    """Consensus K over the uncensored ``votes`` (all of them when every vote is censored).

    Returns (K, facts): rule (a sentence), used and abstained (estimator names), fallback (True
    when every vote was censored), legacy_k (what the rule without censoring would have chosen)."""
    if not votes:
        raise ValueError("no votes")
    used = [v for v in votes if v.censored is None]
    abstained = [v.name for v in votes if v.censored is not None]
    legacy = consensus_vote([v.vote for v in votes], how)
    if used:
        k = consensus_vote([v.vote for v in used], how)
        rule = f"{how} of the {len(used)} uncensored votes"
        if abstained:
            rule += f"; censored at a bound, abstained: {', '.join(abstained)}"
    else:
        k = legacy
        rule = (
            f"every vote censored at a bound of the range: fallback to the {how} of all clipped "
            "votes; K sits at a bound, widen [k_min, k_max]"
        )
    facts = {
        "rule": rule,
        "used": [v.name for v in used],
        "abstained": abstained,
        "fallback": not used,
        "legacy_k": legacy,
    }
    return k, facts


@dataclass
class AutoKResult:
    """k: the consensus count. votes: estimator -> its clipped vote. estimators: estimator -> Vote
    (raw count, censoring and why). consensus: the rule's facts (see ``decide``). details:
    per-estimator facts (score curves, lambda, ...), JSON-serialisable. sample_size: rows seen."""

    k: int
    votes: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)
    sample_size: int = 0
    estimators: dict[str, Vote] = field(default_factory=dict)
    consensus: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "votes": dict(self.votes),
            "sample_size": self.sample_size,
            "details": self.details,
            "estimators": {name: v.as_dict() for name, v in self.estimators.items()},
            "consensus": dict(self.consensus),
        }
