"""Pick an MRL candidate on validation episodes (`benchmarks/memory_retention.py --seed 4321`, not the benchmark's
1234): recall at every k and mean reward at or above stage 4's (the system labelled ``stage4``); among those the
highest mean reward. Reads one or more result files (stage 4 in any of them). Prints the label (or ``none``) and
writes each candidate's episodes recalled per k and mean reward to stderr.

    python scripts/select_mrl.py val_a.json val_b.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def qualifies(system: dict, reference: dict) -> bool:
    return (all(system["recall"][k] >= reference["recall"][k] for k in reference["recall"])
            and system["reward_mean"] >= reference["reward_mean"])


def select(docs: list[dict], reference_label: str = "stage4") -> tuple[str | None, list[str]]:
    """The label picked (None: no candidate qualifies) and one line of reasoning per system."""
    systems: dict[str, dict] = {}
    for doc in docs:
        systems.update({k: v for k, v in doc["systems"].items() if v.get("ablation_of") is None})
    if reference_label not in systems:
        raise ValueError(f"no system labelled {reference_label!r} in the result files")
    reference = systems[reference_label]

    def episodes(s: dict) -> list[int]:
        return [round(s["recall"][k] * s["episodes_per_k"][k]) for k in s["recall"]]

    lines, ok = [], []
    for label, system in systems.items():
        if label == reference_label:
            continue
        fine = qualifies(system, reference)
        lines.append(f"{label} {episodes(system)} {system['reward_mean']:.4f} {'ok' if fine else 'below ' + reference_label}")
        if fine:
            ok.append((system["reward_mean"], system["recall_mean"], label))
    lines.append(f"{reference_label} {episodes(reference)} {reference['reward_mean']:.4f}")
    return (max(ok)[2] if ok else None), lines


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    pick, lines = select([json.loads(Path(p).read_text()) for p in paths])
    print("\n".join(lines), file=sys.stderr)
    print(pick or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
