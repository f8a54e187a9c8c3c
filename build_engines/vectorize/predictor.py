"""Tier 2's quality predictor: a small MLP, features + parameter vector -> SSIM and ln(SVG bytes)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np
import torch
from torch import nn

from build_engines.vectorize.dataset import Table

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """Quality predictor: ``(N, F)`` features, ``(N, P)`` parameters -> ``(N,)`` SSIM, ``(N,)`` ln bytes."""

    def __call__(self, features: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict SSIM and log bytes."""
        ...


SSIM_FLOOR = 1e-4  # the SSIM head predicts u = -ln(1 - ssim), which spreads out the high-quality end


def ssim_to_target(ssim: np.ndarray) -> np.ndarray:
    """The regression target for SSIM: ``-ln(1 - ssim)`` (0.9 -> 2.3, 0.97 -> 3.5, 0.99 -> 4.6)."""
    return -np.log(np.maximum(1.0 - ssim, SSIM_FLOOR))


class QualityNet(nn.Module):
    """MLP with the feature standardisation baked in, so the exported graph reads raw features."""

    def __init__(self, n_features: int, n_params: int, mean: np.ndarray, std: np.ndarray, hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.body = nn.Sequential(
            nn.Linear(n_features + n_params, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )
        self.register_buffer("out_shift", torch.zeros(2))

    def forward(self, features: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted SSIM ``(N, 1)`` and ln(bytes) ``(N, 1)``."""
        z = (features - self.mean) / self.std
        out = self.body(torch.cat([z, params], dim=1)) + self.out_shift
        return 1.0 - torch.exp(-torch.clamp(out[:, 0:1], 0.0, -float(np.log(SSIM_FLOOR)))), out[:, 1:2]


def split_images(n_images: int, holdout: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out images (by image, so no image leaks between splits)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n_images, dtype=bool)
    mask[rng.permutation(n_images)[: int(round(n_images * holdout))]] = True
    return mask


def train_predictor(table: Table, heldout: np.ndarray, seed: int, epochs: int = 60) -> tuple[QualityNet, dict]:
    """Fit :class:`QualityNet` on the table rows of images not in ``heldout``.

    Returns:
        The model (eval mode) and metrics: MAE of SSIM and ln(bytes) on held-out images.
    """
    torch.manual_seed(seed)
    train_rows = ~heldout[table.image]
    fit_features = table.features[~heldout] if (~heldout).any() else table.features
    mean, std = fit_features.mean(0), fit_features.std(0) + 1e-3
    model = QualityNet(table.features.shape[1], table.params.shape[1], mean, std)
    targets = np.stack([ssim_to_target(table.ssim), np.log(table.n_bytes)], axis=1).astype(np.float32)
    model.out_shift.copy_(torch.as_tensor(targets[train_rows].mean(0)))
    x_f = torch.as_tensor(table.features[table.image])
    x_p = torch.as_tensor(table.params)
    y = torch.as_tensor(targets)
    index = np.flatnonzero(train_rows)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for batch in np.array_split(rng.permutation(index), max(1, len(index) // 256)):
            out = model.body(torch.cat([(x_f[batch] - model.mean) / model.std, x_p[batch]], 1)) + model.out_shift
            loss = nn.functional.smooth_l1_loss(out, y[batch], beta=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        scheduler.step()
        if (epoch + 1) % max(1, epochs // 6) == 0 or epoch + 1 == epochs:
            logger.info(
                "predictor epoch %d/%d: loss %.4f (%.0f s)",
                epoch + 1,
                epochs,
                total / max(len(index), 1),
                time.perf_counter() - start,
            )
    model.eval()
    metrics = evaluate_predictor(model, table, heldout if heldout.any() else ~heldout)
    logger.info("predictor held-out MAE: ssim %.4f, ln bytes %.3f", metrics["ssim_mae"], metrics["log_bytes_mae"])
    return model, metrics


def evaluate_predictor(model: QualityNet, table: Table, images: np.ndarray) -> dict:
    """Mean absolute errors of ``model`` on the rows of the selected ``images``."""
    rows = images[table.image]
    with torch.no_grad():
        ssim, log_bytes = model(torch.as_tensor(table.features[table.image[rows]]), torch.as_tensor(table.params[rows]))
    return {
        "ssim_mae": float(np.abs(ssim.numpy()[:, 0] - table.ssim[rows]).mean()),
        "log_bytes_mae": float(np.abs(log_bytes.numpy()[:, 0] - np.log(table.n_bytes[rows])).mean()),
        "rows": int(rows.sum()),
    }


def as_numpy_predictor(model: QualityNet):
    """A fast batched numpy callable with the :class:`Predictor` signature."""

    def predict(features: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            ssim, log_bytes = model(
                torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(params, dtype=torch.float32)
            )
        return ssim.numpy()[:, 0], log_bytes.numpy()[:, 0]

    return predict
