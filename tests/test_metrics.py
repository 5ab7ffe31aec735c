"""GAIC's metrics on hand-computed cases (definitions in ../shared/data/README.md), ties included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from s2cnet.training.metrics import acc_k_n, average_metrics, image_metrics

# 12 candidates. MOS sorted: 4.5 4.0 3.5 3.5 3.5 3.5 3.0 3.0 2.8 2.5 2.0 1.0
# 5th best MOS is 3.5, shared by 4 crops, so 6 crops count as "top 5" (ties count): {0, 2, 4, 5, 7, 10}.
# 10th best MOS is 2.5, so every crop except #3 (2.0) and #6 (1.0) counts as "top 10".
MOS = np.array([4.0, 3.0, 4.5, 2.0, 3.5, 3.5, 1.0, 3.5, 2.5, 3.0, 3.5, 2.8])
ORDER = [10, 1, 3, 2, 0, 6, 4, 5, 7, 8, 9, 11]  # predicted ranking, best first
PRED = np.empty(12)
PRED[ORDER] = np.arange(12, 0, -1)


def test_acc_k_n_by_hand_with_mos_ties() -> None:
    # top-1 {10}: 10 is tied 5th best -> 1/1; top-2 adds 1 (3.0, out) -> 1/2;
    # top-3 adds 3 (2.0, out) -> 1/3; top-4 adds 2 (4.5, in) -> 2/4.
    assert [acc_k_n(PRED, MOS, k, 5) for k in (1, 2, 3, 4)] == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4])
    # N=10: 10 in, 1 in, 3 out, 2 in -> 1, 2/2, 2/3, 3/4.
    assert [acc_k_n(PRED, MOS, k, 10) for k in (1, 2, 3, 4)] == pytest.approx([1, 1, 2 / 3, 3 / 4])


def test_image_metrics_acc_means() -> None:
    m = image_metrics(PRED, MOS)
    assert m["Acc1/5"] == 1.0 and m["Acc4/5"] == pytest.approx(0.5)
    assert m["Acc5"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert m["Acc10"] == pytest.approx((1 + 1 + 2 / 3 + 3 / 4) / 4)


def test_acc_with_fewer_candidates_than_n() -> None:
    # 3 crops, N=5: the "N-th best" is the worst crop, so every crop counts.
    assert acc_k_n(np.array([0.1, 0.9, 0.5]), np.array([1.0, 2.0, 3.0]), 1, 5) == 1.0
    # N=2 on the same crops: the best prediction (#1, MOS 2.0) is 2nd best -> in; top-3 holds #0 (MOS 1.0) -> 2/3.
    assert acc_k_n(np.array([0.1, 0.9, 0.5]), np.array([1.0, 2.0, 3.0]), 3, 2) == pytest.approx(2 / 3)


def test_srcc_uses_average_ranks_for_ties() -> None:
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    mos = np.array([1.0, 1.0, 2.0, 3.0])
    # ranks: pred 1 2 3 4 (mean 2.5), mos 1.5 1.5 3 4 (mean 2.5)
    # deviations: pred -1.5 -.5 .5 1.5; mos -1 -1 .5 1.5 -> sum of products 4.5, squares 5 and 4.5
    expected = 4.5 / math.sqrt(5 * 4.5)
    assert image_metrics(pred, mos)["SRCC"] == pytest.approx(expected)
    # Ties in the prediction too: pred ranks 1.5 1.5 3.5 3.5 (dev -1 -1 1 1) vs mos dev -1 -1 .5 1.5
    expected_both = (1 + 1 + 0.5 + 1.5) / math.sqrt(4 * 4.5)
    assert image_metrics(np.array([0.2, 0.2, 0.7, 0.7]), mos)["SRCC"] == pytest.approx(expected_both)


def test_pcc_by_hand() -> None:
    pred = np.array([1.0, 2.0, 3.0])
    mos = np.array([1.0, 3.0, 2.0])
    # deviations -1 0 1 and -1 1 0: products sum to 1, squares to 2 and 2
    assert image_metrics(pred, mos)["PCC"] == pytest.approx(0.5)
    # PCC sees values, SRCC only order: a monotone but non-linear prediction
    pred2, mos2 = np.array([0.0, 1.0, 2.0, 10.0]), np.array([1.0, 2.0, 3.0, 4.0])
    # pred dev -3.25 -2.25 -1.25 6.75 (sum sq 62.75), mos dev -1.5 -.5 .5 1.5 (sum sq 5),
    # products 4.875 + 1.125 - .625 + 10.125 = 15.5
    m = image_metrics(pred2, mos2)
    assert m["SRCC"] == pytest.approx(1.0)
    assert m["PCC"] == pytest.approx(15.5 / math.sqrt(62.75 * 5))


def test_reversed_prediction_and_constant_prediction() -> None:
    m = image_metrics(-MOS, MOS)
    assert m["SRCC"] == pytest.approx(-1.0)
    const = image_metrics(np.ones(12), MOS)
    assert const["SRCC"] == 0.0 and const["PCC"] == 0.0  # undefined correlation: 0, never NaN


def test_average_metrics_reports_acc_in_percent() -> None:
    a = {"SRCC": 0.5, "PCC": 0.25, "Acc1/5": 1.0, "Acc5": 0.5}
    b = {"SRCC": 0.7, "PCC": 0.75, "Acc1/5": 0.0, "Acc5": 0.25}
    avg = average_metrics([a, b])
    assert avg == pytest.approx({"SRCC": 0.6, "PCC": 0.5, "Acc1/5": 50.0, "Acc5": 37.5})
