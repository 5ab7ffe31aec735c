"""GAIC's evaluation metrics, per image then averaged: SRCC, PCC and the Acc_K/N family."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr


def acc_k_n(pred: np.ndarray, mos: np.ndarray, k: int, n: int) -> float:
    """Of the K best-predicted crops, the share whose MOS is >= the N-th best MOS (ties count)."""
    threshold = np.sort(mos)[::-1][min(n, len(mos)) - 1]
    top_k = np.argsort(-pred, kind="stable")[:k]
    return float(np.mean(mos[top_k] >= threshold))


def image_metrics(pred: np.ndarray, mos: np.ndarray) -> dict[str, float]:
    pred, mos = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
    const = np.ptp(pred) == 0 or np.ptp(mos) == 0
    out = {
        "SRCC": 0.0 if const else float(spearmanr(pred, mos)[0]),
        "PCC": 0.0 if const else float(pearsonr(pred, mos)[0]),
    }
    for n in (5, 10):
        for k in range(1, 5):
            out[f"Acc{k}/{n}"] = acc_k_n(pred, mos, k, n)
        out[f"Acc{n}"] = float(np.mean([out[f"Acc{k}/{n}"] for k in range(1, 5)]))
    return out


METRIC_COLUMNS = ("SRCC", "PCC", "Acc1/5", "Acc4/5", "Acc1/10", "Acc4/10", "Acc5", "Acc10")


def average_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Mean over images; Acc values are reported in percent as in the papers."""
    out = {}
    for key in per_image[0]:
        v = float(np.mean([m[key] for m in per_image]))
        out[key] = v * 100 if key.startswith("Acc") else v
    return out
