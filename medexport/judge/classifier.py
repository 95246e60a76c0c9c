"""The judge's network: a small CNN for 28x28 Fashion-MNIST images, with a 64-d feature layer.

Images enter as float (B, 1, 28, 28) in [-1, 1] (the demo model's pixel range). ``features`` is the
penultimate layer before its activation: the Frechet distance is computed on it, the class scores on top.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FEATURE_DIM = 64


class FashionJudge(nn.Module):
    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),  # (B, 64, 7, 7)
        )
        self.fc = nn.Linear(64 * 7 * 7, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).flatten(1))  # (B, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, 10) logits

    @torch.no_grad()
    def embed(self, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
        """(features (B, 64), probabilities (B, 10)) in eval mode, in chunks."""
        feats, probs = [], []
        for chunk in x.split(batch):
            f = self.features(chunk)
            feats.append(f)
            probs.append(torch.softmax(self.head(f), dim=-1))
        return torch.cat(feats), torch.cat(probs)
