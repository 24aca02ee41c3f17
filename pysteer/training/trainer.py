"""A TopK sparse autoencoder and its training step (Gao et al. 2024, "Scaling and evaluating SAEs").

On normalised inputs ``x`` [B, D] (see "Input normalisation" below):

    pre  = (x − b_dec) @ W_enc + b_enc                       [B, F]
    v, i = topk(pre, k)                                       [B, k] values and latent indices
    x̂    = Σ_j relu(v_j) · W_dec[i_j] + b_dec                [B, D]   (embedding-bag decode)
    L    = Σ‖x − x̂‖² / Σ‖x − mean_B(x)‖²                     MSE normalised by the batch variance
         + α · AuxK                                            (only while some latents are dead)
    AuxK = Σ‖e − ê‖² / Σ‖e − mean_B(e)‖²,  e = x − x̂ (detached),
           ê = Σ relu(top-k_aux of pre over dead latents) · W_dec[·]

Decoder rows stay unit-norm: the gradient component parallel to each row is removed
before the Adam step and the rows are renormalised after it. ``W_enc`` starts as
``W_dec^T``, ``b_enc`` at zero, ``b_dec`` at the geometric median of the first buffer.
A latent is dead when it has not fired in the last ``dead_tokens`` training tokens.

Input normalisation: activations are multiplied by ``s = sqrt(D / E‖x‖²)`` (estimated
once, from the first buffer) so that E‖s·x‖² = D whatever the layer's scale; the saved
SAE takes raw activations (see :meth:`TopKTrainer.to_sae` for the folding).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import ops
from ..sae import SAE
from .config import TrainConfig

__all__ = ["TrainConfig", "TopKTrainer", "reconstruction_metrics", "geometric_median"]


def geometric_median(x: torch.Tensor, iterations: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """argmin_m Σ‖x_i − m‖ (Weiszfeld's iteration from the mean): a robust centre for b_dec."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() < eps * (1 + median.norm()):
            return new
        median = new
    return median


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor, acts_nonzero: torch.Tensor) -> dict:
    """``explained_variance = 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²``, ``l0 = mean_t #{f_t > 0}``, ``mse``.

    ``x``, ``x_hat`` [N, D]; ``acts_nonzero`` [N] (active latents per token). Sums in fp64.
    """
    x, x_hat = x.double(), x_hat.double()
    residual = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    return {"explained_variance": float(1 - residual / total),
            "l0": float(acts_nonzero.double().mean()),
            "mse": float(residual / x.shape[0])}


class TopKTrainer:
    """One TopK SAE being trained: parameters, Adam state, dead-latent counters, scale."""

    PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")

    def __init__(self, d_in: int, config: TrainConfig, seed: int,
                 device: "torch.device | str" = "cpu"):
        self.config, self.d_in, self.device = config, d_in, torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(config.d_sae, d_in, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec.to(self.device))
        self.W_enc = torch.nn.Parameter(w_dec.t().contiguous().to(self.device))
        self.b_enc = torch.nn.Parameter(torch.zeros(config.d_sae, device=self.device))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in, device=self.device))
        # Gao et al.'s small epsilon: with unit-scale inputs Adam's default 1e-8 is not negligible.
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr, betas=(0.9, 0.999),
                                          eps=6.25e-10)
        self.tokens_since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=self.device)
        self.scale: Optional[float] = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [getattr(self, name) for name in self.PARAMS]

    # ------------------------------------------------------------------ initialise
    def initialise(self, sample: torch.Tensor) -> None:
        """Set the input scale and b_dec from raw activations ``sample`` [N, D] (first buffer)."""
        sample = sample.to(self.device, torch.float32)
        self.scale = math.sqrt(self.d_in / float((sample.double() ** 2).sum(-1).mean()))
        with torch.no_grad():
            self.b_dec.copy_(geometric_median(self.scale * sample[:8192]))

    # --------------------------------------------------------------------- forward
    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre [B, F], relu'd top-k values [B, k], indices [B, k]) for normalised ``x``."""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        values, indices = pre.topk(self.config.k, dim=-1)
        return pre, values.relu(), indices

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Σ_j values_j · W_dec[indices_j] (no bias) — never forms the [B, F] activations.

        Differentiable, for training; :meth:`evaluate` (no gradients) decodes with the
        ``sparse_decode`` kernel instead."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pre, values, indices = self.encode_topk(x)
        return self.decode_sparse(values, indices) + self.b_dec, pre, values, indices

    # ------------------------------------------------------------------------ step
    def step(self, x_raw: torch.Tensor, lr: float) -> dict:
        """One Adam step on a raw batch [B, D]; returns the batch's loss terms and metrics."""
        if self.scale is None:
            raise RuntimeError("call initialise() on a first buffer before training")
        x = self.scale * x_raw.to(self.device, torch.float32)
        x_hat, pre, values, indices = self.forward(x)
        variance = ((x - x.mean(0)) ** 2).sum(-1).mean()
        mse = ((x_hat - x) ** 2).sum(-1).mean() / variance
        loss = mse
        dead = self.tokens_since_fired >= self.config.dead_tokens
        aux = torch.zeros((), device=self.device)
        n_dead = int(dead.sum())
        if n_dead and self.config.aux_coef > 0:
            error = (x - x_hat).detach()
            masked = pre.masked_fill(~dead, float("-inf"))
            aux_values, aux_indices = masked.topk(min(self.config.aux_k, n_dead), dim=-1)
            error_hat = self.decode_sparse(aux_values.relu(), aux_indices)
            aux = ((error_hat - error) ** 2).sum(-1).mean() / \
                ((error - error.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + self.config.aux_coef * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # Keep ‖W_dec[i]‖ = 1: drop the gradient's radial part, step, renormalise.
            grad = self.W_dec.grad
            grad -= (grad * self.W_dec).sum(-1, keepdim=True) * self.W_dec
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)
            fired = torch.zeros_like(dead)
            fired[indices[values > 0]] = True
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[fired] = 0
            nonzero = (values > 0).sum(-1)
        return {"loss": float(loss.detach()), "mse_normalised": float(mse.detach()), "aux_loss": float(aux.detach()),
                "explained_variance": 1.0 - float(mse.detach()),  # mse is already over the batch variance
                "l0": float(nonzero.float().mean()), "dead_fraction": n_dead / self.config.d_sae}

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.config.dead_tokens).float().mean())

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, x_raw: torch.Tensor, chunk: int = 4096) -> dict:
        """Reconstruction metrics of the SAE being trained on raw activations [N, D]."""
        hats, nonzero = [], []
        for lo in range(0, x_raw.shape[0], chunk):
            x = self.scale * x_raw[lo:lo + chunk].to(self.device, torch.float32)
            _, values, indices = self.encode_topk(x)
            x_hat = ops.sparse_decode(values, indices, self.W_dec, bias=self.b_dec)
            hats.append((x_hat / self.scale).cpu())
            nonzero.append((values > 0).sum(-1).cpu())
        return reconstruction_metrics(x_raw.cpu(), torch.cat(hats), torch.cat(nonzero))

    # ------------------------------------------------------------------- exporting
    @torch.no_grad()
    def to_sae(self, dtype: torch.dtype = torch.float32, **fields) -> SAE:
        """The trained SAE on *raw* activations, with the input scale ``s`` folded in.

        Trained on s·x: pre = (s·x − b_dec) @ W_enc + b_enc, x̂_raw = x̂/s. Saved with
        W_enc' = W_enc, b_enc' = b_enc/s, W_dec' = W_dec, b_dec' = b_dec/s, so that
            pre' = (x − b_dec/s) @ W_enc + b_enc/s = pre/s
        (s > 0: the same top-k latents, activations divided by s) and
            x̂'  = (f/s) @ W_dec + b_dec/s = x̂/s.
        Decoder rows stay unit-norm, so a feature's activation is in raw residual units.
        """
        s = self.scale
        tensors = dict(W_enc=self.W_enc, b_enc=self.b_enc / s, W_dec=self.W_dec, b_dec=self.b_dec / s)
        tensors = {name: t.detach().float().cpu().to(dtype).contiguous() for name, t in tensors.items()}
        return SAE(tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                   architecture="topk", k=self.config.k, apply_b_dec_to_input=True, **fields)

    # ------------------------------------------------------------------ checkpoint
    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Parameters, Adam moments and dead-latent counters, flat for safetensors."""
        out = {f"{prefix}{name}": getattr(self, name).detach().cpu() for name in self.PARAMS}
        out[f"{prefix}tokens_since_fired"] = self.tokens_since_fired.cpu()
        for name, param in zip(self.PARAMS, self.parameters()):
            state = self.optimizer.state.get(param)
            if state:
                out[f"{prefix}adam.{name}.exp_avg"] = state["exp_avg"].cpu()
                out[f"{prefix}adam.{name}.exp_avg_sq"] = state["exp_avg_sq"].cpu()
                out[f"{prefix}adam.{name}.step"] = torch.as_tensor(state["step"]).reshape(1).cpu()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], prefix: str, scale: float) -> None:
        with torch.no_grad():
            for name in self.PARAMS:
                getattr(self, name).copy_(tensors[f"{prefix}{name}"])
            self.tokens_since_fired.copy_(tensors[f"{prefix}tokens_since_fired"])
        self.optimizer.state.clear()
        for name, param in zip(self.PARAMS, self.parameters()):
            key = f"{prefix}adam.{name}.exp_avg"
            if key in tensors:
                self.optimizer.state[param] = {
                    "step": tensors[f"{prefix}adam.{name}.step"].reshape(()).clone(),
                    "exp_avg": tensors[key].to(self.device).clone(),
                    "exp_avg_sq": tensors[f"{prefix}adam.{name}.exp_avg_sq"].to(self.device).clone()}
        self.scale = scale
