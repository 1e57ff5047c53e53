"""The namaskar toy task: the default config must learn every next letter."""

import pytest

from rnnkit.tasks.namaskar import NamaskarConfig, train_namaskar


def test_default_config_learns_the_word():
    lines = []
    result = train_namaskar(NamaskarConfig(), log=lines.append)

    assert result.predictions == "amaskar"
    assert result.accuracy == 1.0
    assert len(result.losses) == NamaskarConfig().steps
    # Measured ratio is about 0.001 for seeds 0..19; 0.05 leaves a wide margin.
    assert result.losses[-1] < 0.05 * result.losses[0]
    assert lines[-1] == "next-letter accuracy 7/7 = 100%"


@pytest.mark.parametrize("seed", range(1, 5))
def test_other_seeds_learn_the_word(seed):
    result = train_namaskar(NamaskarConfig(seed=seed), log=lambda line: None)
    assert result.accuracy == 1.0


@pytest.mark.parametrize(
    "field, value",
    [("word", "n"), ("hidden_size", 0), ("steps", 0), ("learning_rate", 0.0), ("learning_rate", -0.1)],
)
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        train_namaskar(NamaskarConfig(**{field: value}), log=lambda line: None)
