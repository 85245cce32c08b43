"""Stop 21: of the held-out targets (new items) the hard filters remove, which filter removes them, whether
one of the last three liked items breaks that filter too (a filter the conversation has moved past), and
whether a value of the filter is in the last user turn ("last") or only earlier.

Replays the held-out slice of the training dialogs (`reports/heldout_slice.py`). Never reads the ReDial
test split.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from retrieval.candidates import Constraints

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice, new_item_samples  # noqa: E402


def one(constraints: Constraints, kind: str, name: str) -> Constraints:
    c = Constraints()
    getattr(c, kind)[name] = getattr(constraints, kind)[name]
    return c


def main() -> None:
    data = heldout_slice()
    catalog = data.catalog
    total = blocked = 0
    kinds: Counter[str] = Counter()
    for sample, item, prefs in new_item_samples(data):
        if item is None:
            continue
        total += 1
        c = prefs.constraints
        if c.allows(item):
            continue
        blocked += 1
        liked = [catalog[i] for i in prefs.liked if i in catalog]
        for kind in ("include", "include_all", "exclude", "ranges"):
            for name in getattr(c, kind):
                single = one(c, kind, name)
                if single.allows(item):
                    continue
                # Does some liked item (the last three) break this constraint too?
                broken_by_liked = sum(not single.allows(x) for x in liked[-3:])
                last_user = next((t.text for t in reversed(sample.context) if t.role == "user"), "")
                in_last = "last" if any(v.lower() in last_user.lower() for v in
                                        (getattr(c, kind)[name] if kind != "ranges" else [])) else "earlier"
                kinds[f"{kind}:{name}:liked_breaks={min(broken_by_liked, 1)}:{in_last}"] += 1
    print(f"{blocked} of {total} new-item targets blocked")
    for k, v in kinds.most_common():
        print(f"{v:5d} {k}")


if __name__ == "__main__":
    main()
