"""Which held-out targets (new items) do the session's hard filters remove, and why (stop 20 diagnosis).

Replays the held-out slice of the training dialogs (see `reports/heldout_slice.py`) through the full
recommender's inputs, and for each new-item target that the constraints disallow, prints the user turns,
the constraints and the target's values of the constrained fields. Never reads the ReDial test split.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice, new_item_samples  # noqa: E402


def main() -> None:
    total = blocked = 0
    kinds: Counter[str] = Counter()
    for sample, item, prefs in new_item_samples(heldout_slice()):
        total += 1
        if item is None or prefs.constraints.allows(item):
            continue
        blocked += 1
        c = prefs.constraints
        why = []
        for name, wanted in {**c.include, **c.include_all}.items():
            values = sorted(item.lists.get(name, [])) or [item.text.get(name, "")]
            why.append(f"include {name}={wanted} item={values}")
            kinds["include"] += 1
        for name, unwanted in c.exclude.items():
            if {u.lower() for u in unwanted} & {v.lower() for v in item.lists.get(name, [])}:
                why.append(f"exclude {name}={unwanted}")
                kinds["exclude"] += 1
        for name, rng in c.ranges.items():
            why.append(f"range {name}={rng} item={item.numbers.get(name)}")
            kinds["range"] += 1
        print("=" * 80)
        print("target:", item.title, "|", "; ".join(why))
        for turn in sample.context[-8:]:
            print(f"  {turn.role[:4]}: {turn.text[:160]}")
    print(f"\n{blocked} of {total} new-item targets blocked by filters; {dict(kinds)}")


if __name__ == "__main__":
    main()
