"""Ranking math: normalization, ordering, top_n and billing units."""

from __future__ import annotations

import math

import pytest

from compat_api.core.ranking import Normalization, normalize, order_by_score, search_units, sigmoid


@pytest.mark.parametrize("x", [-800.0, -30.0, -1.5, 0.0, 2.0, 40.0, 800.0])
def test_sigmoid_matches_logistic_and_never_overflows(x: float) -> None:
    expected = 1 / (1 + math.exp(-x)) if x > -700 else 0.0
    assert sigmoid(x) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= sigmoid(x) <= 1.0


def test_cosine_normalization_maps_onto_unit_interval() -> None:
    assert normalize([-1.0, 0.0, 1.0], Normalization.COSINE) == [0.0, 0.5, 1.0]
    assert normalize([0.0], Normalization.SIGMOID) == [0.5]


def test_order_is_highest_first_and_ties_keep_input_order() -> None:
    assert order_by_score([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]


@pytest.mark.parametrize(("top_n", "expected"), [(None, 3), (0, 3), (1, 1), (2, 2), (3, 3), (99, 3)])
def test_top_n_none_zero_or_too_large_means_all(top_n: int | None, expected: int) -> None:
    order = order_by_score([0.2, 0.7, 0.4], top_n)
    assert len(order) == expected
    assert order == [1, 2, 0][:expected]


@pytest.mark.parametrize(("docs", "units"), [(1, 1), (100, 1), (101, 2), (1000, 10)])
def test_search_units_one_per_hundred_documents(docs: int, units: int) -> None:
    assert search_units(docs) == units
