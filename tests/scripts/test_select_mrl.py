"""`scripts/select_mrl.py`: a candidate is taken only at or above stage 4 at every k and on the mean reward; among
those, the highest reward."""

from __future__ import annotations

import pytest


@pytest.fixture
def selector(load_script):
    return load_script("scripts/select_mrl.py")


def _system(recall: list[int], reward: float, ablation_of: str | None = None) -> dict:
    ks = ["1", "2", "4"]
    return {"recall": {k: r / 64 for k, r in zip(ks, recall, strict=True)}, "episodes_per_k": dict.fromkeys(ks, 64),
            "recall_mean": sum(recall) / 192, "reward_mean": reward, "ablation_of": ablation_of}


def test_only_candidates_at_or_above_every_k_and_the_reward_qualify(selector):
    doc = {"systems": {"stage4": _system([62, 59, 63], 4.61),
                       "lower_k2": _system([64, 58, 63], 4.90),    # one episode fewer at k = 2
                       "lower_reward": _system([63, 60, 63], 4.60),
                       "equal": _system([62, 59, 63], 4.61),
                       "better": _system([63, 61, 63], 4.70),
                       "best_reward": _system([62, 60, 63], 4.75),
                       "better/memory_reset": _system([0, 0, 0], 1.4, ablation_of="better")}}
    pick, lines = selector.select([doc])
    assert pick == "best_reward"
    assert "lower_k2 [64, 58, 63] 4.9000 below stage4" in lines and "equal [62, 59, 63] 4.6100 ok" in lines
    assert not any(line.startswith("better/memory_reset") for line in lines)


def test_systems_come_from_several_files_and_none_may_qualify(selector, tmp_path, capsys):
    a = {"systems": {"stage4": _system([62, 59, 63], 4.61), "x": _system([61, 59, 63], 4.9)}}
    b = {"systems": {"y": _system([62, 59, 63], 4.5)}}
    assert selector.select([a, b])[0] is None
    paths = []
    for name, doc in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.json"
        path.write_text(__import__("json").dumps(doc))
        paths.append(str(path))
    assert selector.main(paths) == 0 and capsys.readouterr().out.strip() == "none"
    with pytest.raises(ValueError, match="stage4"):
        selector.select([b])
