"""Pure-PyTorch reference implementations of pysteer's ops.

These are the CPU path and the oracle every kernel is tested against. They favour
clarity over speed but never change the math: all accumulation is in fp32 and the
result is rounded to the hidden dtype once, so a row that is left alone
(``row_index == -1``) comes back bit-identical. Rows never mix: a NaN in one
``hidden`` row spreads over that row only, and every other row comes back exactly
as it would without it.

Shapes (T tokens, D = d_model, S selected features, K dense directions,
C configurations, F = d_sae, k = top-k width):

- ``hidden``      [T, D]  fp32 | fp16 | bf16, updated in place
- ``row_index``   [T]     int32, row of ``coeffs`` for each token, -1 = untouched
- ``coeffs``      [C, S] or [C, K] fp32
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .modes import DenseEdit, FeatureEdit

# Plain ints, not IntEnum members: torch.compile folds `tensor == IntEnum` into a bool.
_ADD, _SET, _SCALE, _ABLATE = (int(e) for e in FeatureEdit)
_PROJECT = int(DenseEdit.PROJECT)


def _per_token_coeffs(row_index: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficients gathered per token [T, S] fp32, steered-token mask [T, 1])."""
    steered = (row_index >= 0).unsqueeze(1)
    per_token = coeffs.float().index_select(0, row_index.clamp(min=0).long())
    return per_token, steered


def apply_feature_edit(acts: torch.Tensor, coeffs: torch.Tensor, edit_modes: torch.Tensor) -> torch.Tensor:
    """f' = edit(f, c) elementwise; ``acts``/``coeffs`` [T, S], ``edit_modes`` [S] int8."""
    modes = edit_modes.long().unsqueeze(0)
    edited = torch.where(modes == _ADD, acts + coeffs, acts)
    edited = torch.where(modes == _SET, coeffs, edited)
    edited = torch.where(modes == _SCALE, acts * coeffs, edited)
    edited = torch.where(modes == _ABLATE, torch.zeros_like(acts), edited)
    return edited


def encode_selected(hidden: torch.Tensor, enc_rows: torch.Tensor, enc_bias: torch.Tensor,
                    threshold: torch.Tensor, input_offset: torch.Tensor) -> torch.Tensor:
    """Activations of the selected features only, [T, S] fp32.

    pre_i = enc_rows[i] . (h - input_offset) + enc_bias[i]
    f_i   = relu(pre_i) * (pre_i > threshold_i)       (threshold 0 gives plain ReLU)
    """
    x = hidden.float() - input_offset.float()
    pre = x @ enc_rows.float().t() + enc_bias.float()
    return torch.relu(pre) * (pre > threshold.float())


def sparse_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                  enc_rows: torch.Tensor, enc_bias: torch.Tensor, threshold: torch.Tensor,
                  dec_rows: torch.Tensor, input_offset: torch.Tensor, edit_modes: torch.Tensor,
                  feature_acts: Optional[torch.Tensor] = None) -> None:
    """h += sum_i (f'_i - f_i) * dec_rows[i]   for every token with row_index >= 0.

    ``enc_rows``/``dec_rows`` [S, D], ``enc_bias``/``threshold`` [S], ``input_offset``
    [D] (b_dec when the SAE subtracts it from its input, else zeros), ``edit_modes``
    [S] int8 (:class:`FeatureEdit`). When ``feature_acts`` [T, S] is given (TopK SAEs,
    whose activations come from the full encode + top-k), the encode is skipped.
    """
    if feature_acts is None:
        acts = encode_selected(hidden, enc_rows, enc_bias, threshold, input_offset)
    else:
        acts = feature_acts.float()
    per_token, steered = _per_token_coeffs(row_index, coeffs)
    delta = torch.where(steered, apply_feature_edit(acts, per_token, edit_modes) - acts, 0.0)
    hidden.copy_((hidden.float() + delta @ dec_rows.float()).to(hidden.dtype))


def dense_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                 directions: torch.Tensor, dense_modes: torch.Tensor) -> None:
    """Dense directions ``directions`` [K, D] with modes [K] int8 (:class:`DenseEdit`).

    add:     h += c_k * u_k
    project: h += (c_k - h.u_k) * u_k     (c_k = z-bar; u_k must be unit length)

    Every direction reads the same incoming ``h`` and their changes are summed, so
    the order of directions never matters.
    """
    per_token, steered = _per_token_coeffs(row_index, coeffs)
    h = hidden.float()
    u = directions.float()
    project = dense_modes.long().unsqueeze(0) == _PROJECT
    amount = torch.where(project, per_token - h @ u.t(), per_token)
    amount = torch.where(steered, amount, 0.0)
    hidden.copy_((h + amount @ u).to(hidden.dtype))


def encode_topk(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                input_offset: torch.Tensor, feature_scale: Optional[torch.Tensor],
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the SAE pre-activations per row, never exposing the [T, F] matrix.

    pre = ((x - input_offset) @ w_enc + b_enc) * feature_scale      w_enc [D, F]
    returns (values [T, k] fp32, indices [T, k] int64), values sorted descending.
    The activation (ReLU for TopK SAEs) is applied by the caller.
    """
    pre = (x.float() - input_offset.float()) @ w_enc.float() + b_enc.float()
    if feature_scale is not None:
        pre = pre * feature_scale.float()
    values, indices = torch.topk(pre, k, dim=-1, sorted=True)
    return values, indices


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor,
                  bias: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[t] = sum_j values[t, j] * w_dec[indices[t, j]] (+ bias) (+ residual[t]).

    ``values`` [T, k], ``indices`` [T, k] (entries -1 are skipped), ``w_dec`` [F, D].
    Output dtype: ``residual``'s if given, else ``w_dec``'s.
    """
    if indices.shape[1] == 0:  # embedding_bag cannot take empty bags of width 0
        out = w_dec.new_zeros((indices.shape[0], w_dec.shape[1]), dtype=torch.float32)
    else:
        weights = torch.where(indices >= 0, values.float(), 0.0)
        out = F.embedding_bag(indices.clamp(min=0).long(), w_dec.float(), mode="sum",
                              per_sample_weights=weights)
    if bias is not None:
        out = out + bias.float()
    if residual is not None:
        return (residual.float() + out).to(residual.dtype)
    return out.to(w_dec.dtype)
