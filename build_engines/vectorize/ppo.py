"""Tier 3: a PPO policy (stable-baselines3) trained against the quality predictor as a surrogate reward.

Each episode is one step: observe a training image's standardised features, emit a parameter vector (actions
in
``[-1, 1]``, mapped to ``[0, 1]``), receive ``-(ln bytes - ln bytes_defaults) - penalty * max(0, ssim_defaults
+
margin - ssim)`` from the predictor.
"""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor
from torch import nn

from build_engines.vectorize.predictor import Predictor, QualityNet
from serve.vectorize.params import DEFAULTS, P, to_vector
from serve.vectorize.tiers import Tier1Map

logger = logging.getLogger(__name__)


class SurrogateEnv(gym.Env):
    """One-step episodes over training images with a predictor-based reward."""

    def __init__(
        self,
        features: np.ndarray,
        predictor: Predictor,
        mean: np.ndarray,
        std: np.ndarray,
        anchors: np.ndarray,
        radius: float,
        penalty: float = 150.0,
        margin: float = 0.005,
    ) -> None:
        super().__init__()
        self.anchors, self.radius = anchors.astype(np.float32), radius
        self.features = features.astype(np.float32)
        self.z = ((features - mean) / std).astype(np.float32)
        self.predictor = predictor
        self.penalty, self.margin = penalty, margin
        defaults = np.repeat(to_vector(DEFAULTS)[None], len(features), axis=0)
        self.default_ssim, self.default_log_bytes = predictor(self.features, defaults)
        self.anchor_ssim, _ = predictor(self.features, self.anchors)
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(features.shape[1],), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(P,), dtype=np.float32)
        self.current = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Draw a training image."""
        super().reset(seed=seed)
        self.current = int(self.np_random.integers(len(self.features)))
        return np.clip(self.z[self.current], -10, 10), {}

    def step(self, action: np.ndarray):
        """Score the action with the predictor; the episode ends."""
        i = self.current
        vector = np.clip(self.anchors[i] + self.radius * np.clip(action, -1.0, 1.0), 0.0, 1.0)
        ssim, log_bytes = self.predictor(self.features[i : i + 1], vector[None].astype(np.float32))
        floor = max(float(self.default_ssim[i]) + self.margin, float(self.anchor_ssim[i]))
        shortfall = max(0.0, floor - float(ssim[0]))
        reward = -(float(log_bytes[0]) - float(self.default_log_bytes[i])) - self.penalty * shortfall
        obs, _ = self.reset()
        return obs, reward, True, False, {}


class _Progress(BaseCallback):
    def __init__(self, total: int) -> None:
        super().__init__()
        self.total, self.next_report = total, total // 5

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_report:
            rewards = [e["r"] for e in self.model.ep_info_buffer] or [float("nan")]
            logger.info("ppo %d/%d steps: mean reward %.3f", self.num_timesteps, self.total, float(np.mean(rewards)))
            self.next_report += max(1, self.total // 5)
        return True


class ActorMean(nn.Module):
    """The policy's deterministic action, as exported: raw features -> parameter vector in ``[0, 1]``.

    The graph holds tier 1's nearest-centroid lookup (the anchor) and adds ``radius`` times the actor's mean.
    """

    def __init__(self, policy, mean: np.ndarray, std: np.ndarray, mapping: Tier1Map, radius: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("t1_mean", torch.as_tensor(mapping.mean, dtype=torch.float32))
        self.register_buffer("t1_std", torch.as_tensor(mapping.std, dtype=torch.float32))
        self.register_buffer("centroids", torch.as_tensor(mapping.centroids, dtype=torch.float32))
        self.register_buffer("anchors", torch.as_tensor(mapping.params, dtype=torch.float32))
        self.radius = radius
        self.extractor = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` -> ``(N, P)``."""
        z1 = (features - self.t1_mean) / self.t1_std
        nearest = torch.argmin(((z1[:, None, :] - self.centroids[None]) ** 2).sum(-1), dim=1)
        z = torch.clamp((features - self.mean) / self.std, -10.0, 10.0)
        action = torch.clamp(self.action_net(self.extractor(z)), -1.0, 1.0)
        return torch.clamp(self.anchors[nearest] + self.radius * action, 0.0, 1.0)


class RatedPolicy(nn.Module):
    """The exported policy: its action, with the quality predictor's SSIM and ln(bytes) for that action."""

    def __init__(self, actor: ActorMean, quality: QualityNet) -> None:
        super().__init__()
        self.actor, self.quality = actor, quality

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, F)`` -> ``(N, P)`` parameters, ``(N, 1)`` SSIM, ``(N, 1)`` ln(bytes)."""
        params = self.actor(features)
        ssim, log_bytes = self.quality(features, params)
        return params, ssim, log_bytes


def train_policy(
    features: np.ndarray,
    predictor: Predictor,
    mapping: Tier1Map,
    steps: int,
    seed: int,
    margin: float = 0.005,
    radius: float = 0.1,
    n_envs: int = 8,
) -> tuple[ActorMean, dict]:
    """Train PPO for ``steps`` steps around tier 1's answers; return the exportable actor and metrics."""
    mean, std = features.mean(0), features.std(0) + 1e-3
    anchors = mapping(features)

    def make() -> SurrogateEnv:
        return SurrogateEnv(features, predictor, mean, std, anchors, radius, margin=margin)

    env = VecMonitor(DummyVecEnv([make for _ in range(n_envs)]))
    env.seed(seed)
    n_steps = max(8, min(64, steps // n_envs))
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        batch_size=min(256, n_steps * n_envs),
        n_epochs=8,
        learning_rate=1e-3,
        gamma=0.0,
        gae_lambda=1.0,
        ent_coef=0.0,
        clip_range=0.2,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "log_std_init": -0.5},
    )
    model.learn(total_timesteps=steps, callback=_Progress(steps))
    actor = ActorMean(model.policy, mean, std, mapping, radius).eval()
    with torch.no_grad():
        vectors = actor(torch.as_tensor(features, dtype=torch.float32)).numpy()
    ssim, log_bytes = predictor(features.astype(np.float32), vectors)
    base = make()
    metrics = {
        "steps": steps,
        "predicted_ssim_gain": float((ssim - base.default_ssim).mean()),
        "predicted_bytes_ratio_median": float(np.median(np.exp(log_bytes - base.default_log_bytes))),
        "margin": margin,
        "radius": radius,
    }
    logger.info(
        "ppo policy on training images (predicted): ssim gain %.4f, median bytes ratio %.3f",
        metrics["predicted_ssim_gain"],
        metrics["predicted_bytes_ratio_median"],
    )
    return actor, metrics
