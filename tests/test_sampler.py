"""The sampler: each transform on its own, the chain, determinism, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpullm.errors import CpullmError
from cpullm.sampler import (
    Sampler,
    SamplingError,
    SamplingParams,
    apply_logit_bias,
    apply_penalties,
    log_softmax,
    min_p_count,
    top_k_ids,
    top_p_count,
)

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def _counts(sampler: Sampler, logits, n=4000, history=()):
    return np.bincount([sampler.sample(logits, history) for _ in range(n)], minlength=len(logits))


# ---- the pure steps ------------------------------------------------------------------------


def test_logit_bias_adds_and_bans():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    out = apply_logit_bias(x, {0: 5.0, 2: -math.inf})
    assert out.tolist() == [6.0, 2.0, -math.inf]
    assert x.tolist() == [1.0, 2.0, 3.0]  # input untouched


def test_repeat_penalty_divides_positive_multiplies_negative():
    x = np.array([2.0, -2.0, 4.0, 1.0])
    out = apply_penalties(x, [0, 1, 0], repeat_penalty=2.0)
    assert out.tolist() == [1.0, -4.0, 4.0, 1.0]  # once per id, however often seen


def test_frequency_and_presence_penalties():
    x = np.zeros(4)
    out = apply_penalties(x, [1, 1, 1, 2], frequency_penalty=0.5, presence_penalty=1.0)
    assert out.tolist() == [0.0, -2.5, -1.5, 0.0]
    assert apply_penalties(x, []).tolist() == x.tolist()


def test_top_k_ids_sorted_and_ties_by_id():
    x = np.array([1.0, 5.0, 3.0, 5.0, -1.0])
    assert top_k_ids(x, 2).tolist() == [1, 3]
    assert top_k_ids(x, 3).tolist() == [1, 3, 2]
    assert top_k_ids(x, 0).tolist() == [1, 3, 2, 0, 4]
    assert top_k_ids(x, 99).tolist() == [1, 3, 2, 0, 4]


def test_top_p_count():
    v = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert top_p_count(v, 0.5) == 1
    assert top_p_count(v, 0.51) == 2
    assert top_p_count(v, 0.8) == 2
    assert top_p_count(v, 0.81) == 3
    assert top_p_count(v, 1.0) == 4
    assert top_p_count(v, 1e-9) == 1


def test_min_p_count():
    v = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert min_p_count(v, 0.0) == 4
    assert min_p_count(v, 0.2) == 3  # 0.15 >= 0.1, 0.05 < 0.1
    assert min_p_count(v, 0.5) == 2
    assert min_p_count(v, 1.0) == 1


def test_log_softmax():
    x = np.array([1.0, 2.0, 3.0])
    lp = log_softmax(x)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert np.allclose(lp - lp[0], [0, 1, 2])


# ---- the sampler -----------------------------------------------------------------------------


def test_greedy_is_argmax_after_bias_and_penalties():
    x = np.array([0.1, 3.0, -2.0, 2.9], np.float32)
    s = Sampler(SamplingParams.greedy(), 4)
    assert s.sample(x) == 1
    assert Sampler(SamplingParams.greedy(logit_bias={3: 0.2}), 4).sample(x) == 3
    pen = Sampler(SamplingParams.greedy(repeat_penalty=1.1), 4)
    assert pen.sample(x, history=[1]) == 3
    # repeat_last_n limits what the penalty sees
    short = Sampler(SamplingParams.greedy(repeat_penalty=1.1, repeat_last_n=1), 4)
    assert short.sample(x, history=[1, 0]) == 1
    off = Sampler(SamplingParams.greedy(repeat_penalty=1.1, repeat_last_n=0), 4)
    assert off.sample(x, history=[1]) == 1


def test_same_seed_same_tokens():
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    p = SamplingParams(temperature=1.0, seed=42, top_k=50, top_p=0.9, min_p=0.01)
    s1, s2 = Sampler(p, 1000), Sampler(p, 1000)
    a = [s1.sample(x) for _ in range(50)]
    b = [s2.sample(x) for _ in range(50)]
    assert a == b
    c = [Sampler(SamplingParams(temperature=1.0, seed=43), 1000).sample(x) for _ in range(50)]
    assert a != c


def test_plain_sampling_follows_softmax():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    c = _counts(Sampler(SamplingParams.plain(1.0, seed=0), 4), x, 20000)
    assert np.allclose(c / 20000, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_temperature_sharpens_and_flattens():
    x = np.log(np.array([0.6, 0.4]))
    cold = _counts(Sampler(SamplingParams(temperature=0.05, seed=1, **OFF), 2), x, 2000)
    assert cold[0] > 1990
    hot = _counts(Sampler(SamplingParams(temperature=100.0, seed=1, **OFF), 2), x, 4000)
    assert abs(hot[0] / 4000 - 0.5) < 0.05


def test_top_k_top_p_min_p_restrict_the_draw():
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    only2 = SamplingParams(temperature=1.0, seed=3, top_k=2, top_p=1.0, min_p=0.0)
    c = _counts(Sampler(only2, 4), x)
    assert c[2] == c[3] == 0 and c[0] > c[1] > 0
    nucleus = SamplingParams(temperature=1.0, seed=3, top_k=0, top_p=0.85, min_p=0.0)
    c = _counts(Sampler(nucleus, 4), x)
    assert c[3] == 0 and c[2] > 0
    minp = SamplingParams(temperature=1.0, seed=3, top_k=0, top_p=1.0, min_p=0.6)
    c = _counts(Sampler(minp, 4), x)
    assert c[2] == c[3] == 0 and c[1] > 0
    # renormalized over what is kept: 0.4 / 0.7
    assert abs(_counts(Sampler(only2, 4), x, 8000)[0] / 8000 - 4 / 7) < 0.03


def test_bias_can_ban_and_inf_logits_are_never_drawn():
    x = np.array([0.0, 0.0, -np.inf, 0.0])
    s = Sampler(SamplingParams(temperature=0.7, seed=3, logit_bias={0: -math.inf}), 4)
    assert {s.sample(x) for _ in range(300)} == {1, 3}
    s = Sampler(SamplingParams.plain(0.7, seed=3), 4)
    assert {s.sample(x) for _ in range(300)} == {0, 1, 3}


def test_penalty_changes_the_distribution():
    x = np.zeros(3)
    s = Sampler(SamplingParams(temperature=1.0, seed=5, presence_penalty=2.0, **OFF), 3)
    c = _counts(s, x, 3000, history=[0])
    assert c[0] < c[1] / 3 and c[0] < c[2] / 3


def test_logprobs_recorded():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingParams.greedy(logprobs=2), 4)
    assert s.sample(x) == 0
    lp = s.last
    assert lp.token == 0 and math.isclose(lp.logprob, math.log(0.5))
    assert [t for t, _ in lp.top] == [0, 1]
    assert math.isclose(lp.top[1][1], math.log(0.3))
    assert Sampler(SamplingParams.greedy(), 4).last is None


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(repeat_penalty=0.0), "repeat_penalty"),
        (dict(repeat_last_n=-2), "repeat_last_n"),
        (dict(frequency_penalty=3.0), "frequency_penalty"),
        (dict(presence_penalty=float("nan")), "presence_penalty"),
        (dict(logit_bias={-1: 1.0}), "logit_bias"),
        (dict(logit_bias={"x": 1.0}), "logit_bias"),
        (dict(logit_bias={1: float("nan")}), "logit_bias"),
        (dict(logit_bias={1: float("inf")}), "logit_bias"),
        (dict(logit_bias=[1, 2]), "logit_bias"),
        (dict(seed=-1), "seed"),
        (dict(logprobs=21), "logprobs"),
    ],
)
def test_bad_params_are_clear_errors(kw, needle):
    with pytest.raises(SamplingError, match=needle) as e:
        SamplingParams(**kw)
    assert isinstance(e.value, CpullmError) and isinstance(e.value, ValueError)


def test_logit_bias_json_keys_and_vocab_check():
    assert SamplingParams(logit_bias={"7": 1}).logit_bias == {7: 1.0}
    with pytest.raises(SamplingError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={10: 1.0}), vocab_size=10)
    with pytest.raises(SamplingError, match="logits"):
        Sampler(SamplingParams(), vocab_size=10).sample(np.zeros(5))
