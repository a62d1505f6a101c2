"""The whole-word recall rule shared by training, benchmarks and the demo."""

from __future__ import annotations

from rxt.recall import recall_hit


def test_recall_hit_whole_words_case_and_punctuation():
    assert recall_hit("Your cat is called Miso.", "Miso")
    assert recall_hit("it is OLIVE green!", "olive green")
    assert recall_hit("The code is TK-4821.", "tk-4821")
    assert not recall_hit("Misoshiru is soup", "Miso")
    assert not recall_hit("copper-falconry", "copper-falcon")
    assert not recall_hit("TK-48210", "TK-4821")
    assert not recall_hit("anything", "")


def test_training_reexports_the_same_rule():
    from training.data.synthetic import recall_hit as reexported

    assert reexported is recall_hit
