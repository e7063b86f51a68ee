"""Rolling policy out safely: where a shadow policy disagrees, and what a re-scan would change.

Both work on records' clear metadata only. :func:`shadow_diff` counts the records whose
``shadow`` verdict (the candidate policy set of ``policies.shadow``) differs from the enforced
decision, per change of action, rule, app and group: what ``logs list --shadow-diff`` and the
viewer show. :func:`compare` sets a re-scan's new decision and topics (``logs rescan``) against
what the record says happened. Neither ever sees prompt text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ShadowDiff:
    """Records with a shadow verdict, and the ones where it disagrees with the enforced one."""

    records: int = 0
    with_shadow: int = 0
    disagreements: int = 0
    by_change: Counter[str] = field(default_factory=Counter)  # "allow -> block"
    by_rule: Counter[str] = field(default_factory=Counter)  # the shadow rule that would have decided
    by_app: Counter[str] = field(default_factory=Counter)
    by_group: Counter[str] = field(default_factory=Counter)
    errors: int = 0  # shadow evaluations that failed (the enforced decision stood)
    record_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "with_shadow": self.with_shadow,
            "disagreements": self.disagreements,
            "shadow_errors": self.errors,
            "by_change": dict(self.by_change.most_common()),
            "by_rule": dict(self.by_rule.most_common()),
            "by_app": dict(self.by_app.most_common()),
            "by_group": dict(self.by_group.most_common()),
            "record_ids": self.record_ids,
        }


def disagreement(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """(enforced action, shadow action) when the record's shadow verdict differs, else None.
    Different rules with the same action count as agreement: the user would see no change."""
    shadow = meta.get("shadow")
    if not isinstance(shadow, Mapping) or shadow.get("action") is None:
        return None
    enforced = str((meta.get("decision") or {}).get("action", "allow"))
    candidate = str(shadow["action"])
    return None if enforced == candidate else (enforced, candidate)


def shadow_diff(metadata: Iterable[tuple[str, Mapping[str, Any]]]) -> ShadowDiff:
    diff = ShadowDiff()
    for record_id, meta in metadata:
        diff.records += 1
        shadow = meta.get("shadow")
        if not isinstance(shadow, Mapping):
            continue
        diff.with_shadow += 1
        if shadow.get("error"):
            diff.errors += 1
        pair = disagreement(meta)
        if pair is None:
            continue
        diff.disagreements += 1
        diff.record_ids.append(record_id)
        diff.by_change[f"{pair[0]} -> {pair[1]}"] += 1
        rules = list(shadow.get("rules") or []) or list((meta.get("decision") or {}).get("rule_ids") or [])
        for rule in dict.fromkeys(rules):
            diff.by_rule[str(rule)] += 1
        diff.by_app[str(meta.get("app", "-"))] += 1
        for group in dict.fromkeys(meta.get("groups") or ["(no group)"]):
            diff.by_group[str(group)] += 1
    return diff


def detected(topics: Mapping[str, Any] | None) -> dict[str, str]:
    """Topic -> confidence, for the topics at low or above."""
    return {
        str(name): str(value.get("confidence"))
        for name, value in (topics or {}).items()
        if isinstance(value, Mapping) and value.get("confidence") not in (None, "none")
    }


@dataclass(frozen=True)
class RescanResult:
    """One record re-inspected and re-decided, against what the record says happened."""

    record_id: str
    app: str
    user: str
    before_action: str
    before_rules: tuple[str, ...]
    before_topics: Mapping[str, str]
    after_action: str
    after_rules: tuple[str, ...]
    after_topics: Mapping[str, str]
    after_policy: str
    error: str | None = None  # the record could not be re-scanned (wrong key, inspector down)

    @property
    def changes(self) -> tuple[str, ...]:
        if self.error is not None:
            return ("error",)
        out = []
        if self.before_action != self.after_action:
            out.append("action")
        if _named(self.before_rules) != _named(self.after_rules):
            out.append("rules")
        if dict(self.before_topics) != dict(self.after_topics):
            out.append("topics")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "app": self.app,
            "user": self.user,
            "before": {
                "action": self.before_action,
                "rules": list(self.before_rules),
                "topics": dict(self.before_topics),
            },
            "after": {
                "action": self.after_action,
                "rules": list(self.after_rules),
                "topics": dict(self.after_topics),
                "policy": self.after_policy,
            },
            "changes": list(self.changes),
            "error": self.error,
        }


def _named(rules: Iterable[str]) -> set[str]:
    """The rules a policy author wrote; ``policy:default`` and ``policy:on_error`` are named
    after their policy, so a re-scan with another policy file would always "change" them."""
    return {r for r in rules if ":" not in r}


def before_of(meta: Mapping[str, Any]) -> tuple[str, tuple[str, ...], dict[str, str]]:
    decision = meta.get("decision") or {}
    topics = {**detected(meta.get("topics")), **detected(meta.get("custom_topics"))}
    return str(decision.get("action", "allow")), tuple(str(r) for r in decision.get("rule_ids") or []), topics
