"""A literal PyTorch ∞-former memory: the authors' algorithm, step by step.

Written from docs/math.md §3–§4 (not from the authors' code): it forms the
keys ``K = B W_K``, the scores over all N basis functions, ``V = B W_V`` and the
resampled old signal ``X_old = S B`` exactly as the authors' module does, so
its cost is the authors' cost. keras-infmemory computes the same numbers
with fewer flops; this is the baseline the speed benchmark compares to.
"""

import math

import torch

from keras_infmemory import basis


class LiteralLTM(torch.nn.Module):
    def __init__(
        self,
        num_heads,
        key_dim,
        length,
        num_basis,
        widths,
        ridge,
        tau,
        num_samples,
        min_variance=1e-4,
    ):
        super().__init__()
        e = num_heads * key_dim
        self.h, self.d, self.min_variance = num_heads, key_dim, min_variance
        self.proj_key = torch.nn.Linear(e, e, bias=False)
        self.proj_value = torch.nn.Linear(e, e, bias=False)
        self.attn_out = torch.nn.Linear(e, e, bias=False)
        self.mu = torch.nn.Linear(num_basis, 1, bias=False)
        self.sigma = torch.nn.Linear(num_basis, 1, bias=False)
        self.mask_net = torch.nn.Conv1d(e, e, 3, padding=1)
        c = basis.memory_constants(
            length, num_basis, widths, ridge, tau, num_samples
        )
        for name in ("G_L", "G_inf", "S", "centers", "widths"):
            self.register_buffer(
                name, torch.tensor(c[name], dtype=torch.float32)
            )

    def forward(self, q, x, coefficients):
        """q (B, H, Lq, d), x (B, L, e), coefficients (B, N, e) or None."""
        gate = self.mask_net(x.transpose(1, 2)).transpose(1, 2)
        x = x * torch.sigmoid(gate)
        if coefficients is None:
            b = torch.einsum("ln,ble->bne", self.G_L, x)
        else:
            old = torch.einsum("mn,bne->bme", self.S, coefficients)
            both = torch.cat([old, x], dim=1)  # (B, M + L, e)
            b = torch.einsum("pn,bpe->bne", self.G_inf, both)
        batch, n, _ = b.shape
        keys = self.proj_key(b).view(batch, n, self.h, self.d).transpose(1, 2)
        values = self.proj_value(b).view(batch, n, self.h, self.d)
        values = values.transpose(1, 2)  # (B, H, N, d)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.d)  # (B,H,Lq,N)
        mu = torch.sigmoid(self.mu(scores)).squeeze(-1)  # (B, H, Lq)
        variance = torch.nn.functional.softplus(self.sigma(scores))
        variance = variance.squeeze(-1).clamp(min=self.min_variance)
        total = variance[..., None] + self.widths**2  # (B, H, Lq, N)
        r = torch.exp(-0.5 * (mu[..., None] - self.centers) ** 2 / total)
        r = r / torch.sqrt(2 * math.pi * total)
        z = r @ values  # (B, H, Lq, d)
        z = z.transpose(1, 2).reshape(batch, -1, self.h * self.d)
        return self.attn_out(z), b.detach()
