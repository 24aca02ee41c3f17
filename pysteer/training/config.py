"""The SAE trainer's hyper-parameters, importable without torch (``pysteer train-sae --help``
shows their defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import TrainingError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every layer's SAE (defaults sized for d_model ≈ 576)."""

    d_sae: int = 4096
    k: int = 64
    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 5e-4
    lr_decay_fraction: float = 0.2   # linear decay to 0 over the last 20 % of steps
    aux_k: int = 256                 # latents the AuxK loss may use (Gao et al.: 512 at larger D)
    aux_coef: float = 1 / 32
    dead_tokens: int = 250_000       # ≫ F/k tokens: a live latent fires well within this
    grad_clip: float = 1.0
    buffer_tokens: int = 65_536
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not 0 < self.k <= self.d_sae:
            raise TrainingError(f"--k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        for name in ("d_sae", "tokens", "batch_size", "buffer_tokens", "dead_tokens"):
            if getattr(self, name) <= 0:
                raise TrainingError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.buffer_tokens < self.batch_size:
            raise TrainingError(f"the buffer ({self.buffer_tokens} tokens) must hold at least one "
                             f"batch ({self.batch_size})")
        if self.tokens < self.batch_size:
            raise TrainingError(f"--tokens {self.tokens} is less than one batch ({self.batch_size})")
        if self.lr <= 0:
            raise TrainingError(f"--lr must be positive, got {self.lr}")

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size

    def lr_at(self, step: int) -> float:
        decay_steps = max(1, int(self.total_steps * self.lr_decay_fraction))
        return self.lr * min(1.0, (self.total_steps - step) / decay_steps)
