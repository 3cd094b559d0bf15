"""P4 losses (DistillVLM, Fang et al., ICCV 2021): distilling transformer blocks token-wise.

Registered names: ``attn``, ``token_nce`` (see docs/methods.md, P4). Both compare
chosen student blocks with chosen teacher blocks of two ViTs whose token grids may differ;
the teacher side is resampled to the student grid (``interpolate_tokens``,
``interpolate_attention``). No labels are read.

Inputs read (L layers, B batch, H heads, N = 1 + n*n tokens: the CLS token first, then an
n x n grid of patch tokens in row-major order; no register/distillation tokens):

- ``student["tokens"]`` / ``teacher["tokens"]``: lists of Tensor [B, N, D], the hidden
  states output by the chosen blocks (``token_nce``).
- ``student["attn"]`` / ``teacher["attn"]``: lists of Tensor [B, H, N, N], attention
  probabilities (softmax output; rows sum to 1) of the chosen blocks (``attn``).

Student and teacher may differ in L, H, N and D. Layer ``i`` of the student list is compared
with layer ``j`` of the teacher list for every ``(i, j)`` of the layer map (indices into the
lists, not into the networks); by default ``default_layer_map`` spaces them evenly.
Computation is in float32; teacher tensors are detached targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vldistill.trainers.losses import register_loss

LayerMap = list[tuple[int, int]]


# --- grids and resampling ------------------------------------------------------------------


def grid_size(n_tokens: int, what: str = "tokens") -> int:
    """Side n of the patch grid of a sequence of ``1 + n*n`` tokens (CLS first).

    Raises:
        ValueError: If ``n_tokens - 1`` is not a positive perfect square.
    """
    n = math.isqrt(max(n_tokens - 1, 0))
    if n < 1 or n * n != n_tokens - 1:
        raise ValueError(
            f"{what}: {n_tokens} tokens is not 1 CLS token + a square grid of patch tokens"
        )
    return n


def _resize_last(x: Tensor, grid: int) -> Tensor:
    """Resize the last dim of ``x`` [..., n*n], read as a row-major n x n grid, to grid^2.

    Bilinear, ``align_corners=False``, ``antialias=True``: when shrinking, every source cell
    contributes (a triangle filter widened by the scale factor, like PIL's bilinear resize)
    instead of plain bilinear sampling, which skips cells at factors > 2. The weights are
    non-negative and sum to 1, so a constant grid stays the same constant. When enlarging
    it is ordinary bilinear interpolation.
    """
    n = math.isqrt(x.shape[-1])
    lead = x.shape[:-1]
    out = F.interpolate(
        x.reshape(-1, 1, n, n), size=(grid, grid), mode="bilinear",
        align_corners=False, antialias=True,
    )
    return out.reshape(*lead, grid * grid)


def interpolate_tokens(tokens: Tensor, grid: int) -> Tensor:
    """Resample the patch tokens of ``tokens`` [B, 1+n*n, D] to a grid x grid grid.

    The CLS token (position 0) is kept as is; each channel of the n x n patch grid is
    resized with ``_resize_last`` (antialiased bilinear). Returns [B, 1+grid*grid, D]; the
    input itself when n == grid.
    """
    n = grid_size(tokens.shape[1], "interpolate_tokens")
    if n == grid:
        return tokens
    patches = _resize_last(tokens[:, 1:].transpose(1, 2), grid).transpose(1, 2)
    return torch.cat([tokens[:, :1], patches], dim=1)


def interpolate_attention(attn: Tensor, grid: int) -> Tensor:
    """Resample attention maps ``attn`` [B, H, 1+n*n, 1+n*n] to a grid x grid patch grid.

    Rows are queries, columns keys, token 0 is CLS. Exactly:

    1. keys: the CLS column is kept; for every query row the n*n patch-key part is read as
       an n x n map and resized to grid x grid (``_resize_last``, antialiased bilinear);
    2. queries: the CLS row is kept; for every key column the n*n patch-query part is
       resized the same way;
    3. every row is divided by its sum, so rows are distributions again (shrinking the
       patch part changes its mass; a uniform map stays uniform over the new 1+grid^2
       keys, but the CLS key's share of a row is not preserved).

    Returns [B, H, 1+grid^2, 1+grid^2]; the input itself when n == grid.
    """
    n = grid_size(attn.shape[-1], "interpolate_attention")
    if attn.shape[-2] != attn.shape[-1]:
        raise ValueError(f"interpolate_attention: expected square maps, got {tuple(attn.shape)}")
    if n == grid:
        return attn
    a = torch.cat([attn[..., :1], _resize_last(attn[..., 1:], grid)], dim=-1)
    patch_rows = _resize_last(a[..., 1:, :].transpose(-1, -2), grid).transpose(-1, -2)
    a = torch.cat([a[..., :1, :], patch_rows], dim=-2)
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


# --- layer maps ------------------------------------------------------------------------------


def default_layer_map(n_student: int, n_teacher: int) -> LayerMap:
    """Evenly spaced map: student layer i -> teacher layer round((i+1) * L_t / L_s) - 1.

    Halves round up (not Python's round-half-to-even), so e.g. 4 -> 6 layers gives
    [(0, 1), (1, 2), (2, 4), (3, 5)]; the last student layer always maps to the last
    teacher layer, and a student with more than twice the teacher's layers maps its first
    ones to teacher layer 0 (never -1, which would index the last layer).
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"need >= 1 layer on each side, got {n_student} and {n_teacher}")
    return [
        (i, max(((i + 1) * 2 * n_teacher + n_student) // (2 * n_student) - 1, 0))
        for i in range(n_student)
    ]


def _check_layer_map(layer_map: Sequence[Sequence[int]] | None) -> LayerMap | None:
    if layer_map is None:
        return None
    pairs: LayerMap = []
    for pair in layer_map:
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in pair)
        ):
            raise ValueError(
                f"layer_map entries must be (student, teacher) ints >= 0, got {pair!r}"
            )
        pairs.append((pair[0], pair[1]))
    if not pairs:
        raise ValueError("layer_map must not be empty (use None for the default map)")
    return pairs


def _resolve_layer_map(layer_map: LayerMap | None, n_s: int, n_t: int, loss: str) -> LayerMap:
    if layer_map is None:
        return default_layer_map(n_s, n_t)
    for i, j in layer_map:
        if i >= n_s or j >= n_t:
            raise ValueError(
                f"loss {loss!r}: layer_map pair {(i, j)} out of range for {n_s} student and "
                f"{n_t} teacher layers"
            )
    return layer_map


def _layers(outputs: dict, key: str, who: str, loss: str) -> list[Tensor]:
    layers = outputs.get(key)
    if not isinstance(layers, (list, tuple)) or len(layers) == 0:
        raise ValueError(
            f"loss {loss!r} needs {who}[{key!r}] as a non-empty list of per-layer tensors; "
            f"got keys {sorted(outputs)}"
        )
    return list(layers)


def _example_inputs(
    grad_on: str, b: int = 2, d_s: int = 6, d_t: int = 10, seed: int = 0
) -> tuple[dict, dict, dict]:
    """Random P4 inputs: 2 student layers on a 2x2 grid, 3 teacher layers on a 4x4 grid."""
    g = torch.Generator().manual_seed(seed)

    def attn(heads: int, n: int) -> Tensor:
        return torch.randn(b, heads, n, n, generator=g).softmax(dim=-1)

    student = {
        "tokens": [torch.randn(b, 5, d_s, generator=g) for _ in range(2)],
        "attn": [attn(2, 5) for _ in range(2)],
    }
    for t in student[grad_on]:
        t.requires_grad_(True)
    teacher = {
        "tokens": [torch.randn(b, 17, d_t, generator=g) for _ in range(3)],
        "attn": [attn(4, 17) for _ in range(3)],
    }
    return student, teacher, {}


# --- losses ----------------------------------------------------------------------------------


@register_loss("attn")
class AttentionMSELoss(nn.Module):
    """MSE between student and teacher attention distributions, per mapped layer pair.

    For each ``(i, j)`` of the layer map: average ``student["attn"][i]`` and
    ``teacher["attn"][j]`` over their heads (head counts may differ) -> [B, N, N]; if the
    teacher's grid differs from the student's, resample the head-averaged teacher map to the
    student grid with ``interpolate_attention`` (CLS row/column kept, patch queries and keys
    resized, rows renormalised); then ``mean((A_s - A_t)^2)`` over all B * N_s * N_s entries.
    The loss is the mean over the pairs. Key ``attn_loss``.

    Args:
        layer_map: ``[(student index, teacher index), ...]`` into the ``attn`` lists, or None
            for ``default_layer_map`` computed from the list lengths at each call.
    """

    def __init__(self, layer_map: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        self.layer_map = _check_layer_map(layer_map)

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s_layers = _layers(student, "attn", "student", "attn")
        t_layers = _layers(teacher, "attn", "teacher", "attn")
        pairs = _resolve_layer_map(self.layer_map, len(s_layers), len(t_layers), "attn")
        terms = []
        for i, j in pairs:
            a_s, a_t = s_layers[i].float(), t_layers[j].detach().float().to(s_layers[i].device)
            if a_s.dim() != 4 or a_t.dim() != 4 or a_s.shape[0] != a_t.shape[0]:
                raise ValueError(
                    f"loss 'attn': layer pair {(i, j)} needs [B, H, N, N] maps with the same "
                    f"B, got {tuple(a_s.shape)} and {tuple(a_t.shape)}"
                )
            grid = grid_size(a_s.shape[-1], "student attn")
            a_t = interpolate_attention(a_t.mean(dim=1, keepdim=True), grid).squeeze(1)
            terms.append(F.mse_loss(a_s.mean(dim=1), a_t))
        return {"attn_loss": torch.stack(terms).mean()}

    @staticmethod
    def example_inputs(b: int = 2, seed: int = 0) -> tuple[dict, dict, dict]:
        """Random inputs: student 2 layers, 2 heads, 2x2 grid; teacher 3 layers, 4 heads,
        4x4 grid. Only ``student["attn"]`` requires grad."""
        return _example_inputs("attn", b=b, seed=seed)


@register_loss("token_nce")
class TokenNCELoss(nn.Module):
    """Token-wise InfoNCE between projected student tokens and teacher tokens (MoCo queue).

    For each ``(i, j)`` of the layer map: student tokens ``student["tokens"][i]`` [B, N, D_s]
    go through a learnable ``nn.Linear(student_dim, teacher_dim)`` (one projection shared by
    all pairs) and are L2-normalised -> q; teacher tokens ``teacher["tokens"][j]`` are
    resampled to the student grid with ``interpolate_tokens`` (CLS kept) and normalised -> k.
    For image b and token n the logits are ``cos/tau`` against

    - the positive ``k[b, n]`` (same image, same position),
    - the other N - 1 teacher tokens of the same image ``k[b, m != n]``,
    - the valid entries of the queue (past teacher tokens, detached and normalised),

    and the term is the cross-entropy with the positive as target, mean over B * N tokens;
    the loss is the mean over the pairs. Key ``token_nce_loss``.

    Queue: a FIFO ring buffer ``queue`` [queue_size, teacher_dim] with ``queue_ptr`` (next
    slot) and ``queue_count`` (filled slots; only ``queue[:queue_count]`` are negatives, so
    an empty queue at the start adds none). After the loss is computed, and only when
    ``self.training``, the normalised teacher tokens of every pair of this call (B * N per
    pair, all pairs sharing the one queue) are enqueued; if they exceed ``queue_size`` only
    the last ``queue_size`` are kept. The queue is per process (not gathered across DDP
    ranks) and, being buffers, is part of the module's ``state_dict``. Memory: the logits
    are [B, N, N + queue_size] per pair.

    The projection's parameters belong to this loss module, not to the student: the trainer
    must add the loss's parameters to the optimizer (e.g. ``student.parameters()`` plus
    ``loss.parameters()``) or the projection never trains, and put the loss in train/eval
    mode with the student (eval mode leaves the queue unchanged).

    Args:
        student_dim: Width D_s of the student tokens (>= 1).
        teacher_dim: Width D_t of the teacher tokens (>= 1).
        queue_size: Number of past teacher tokens kept as negatives (>= 0; 0 = no queue).
        tau: Softmax temperature (> 0).
        layer_map: ``[(student index, teacher index), ...]`` into the ``tokens`` lists, or
            None for ``default_layer_map`` computed from the list lengths at each call.
    """

    queue: Tensor
    queue_ptr: Tensor
    queue_count: Tensor

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        queue_size: int = 4096,
        tau: float = 0.07,
        layer_map: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("student_dim", student_dim, 1), ("teacher_dim", teacher_dim, 1),
            ("queue_size", queue_size, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.queue_size, self.tau = queue_size, float(tau)
        self.layer_map = _check_layer_map(layer_map)
        self.proj = nn.Linear(student_dim, teacher_dim)
        self.register_buffer("queue", torch.zeros(queue_size, teacher_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"queue_size={self.queue_size}, tau={self.tau}, layer_map={self.layer_map}"

    def forward(self, student: dict, teacher: dict, batch: dict) -> dict[str, Tensor]:
        s_layers = _layers(student, "tokens", "student", "token_nce")
        t_layers = _layers(teacher, "tokens", "teacher", "token_nce")
        pairs = _resolve_layer_map(self.layer_map, len(s_layers), len(t_layers), "token_nce")
        # a copy: the in-place enqueue below must not change what backward saved
        negatives = self.queue[: int(self.queue_count)].clone()
        terms, keys = [], []
        for i, j in pairs:
            x_s = s_layers[i]
            x_t = t_layers[j].detach().float().to(x_s.device)
            if x_s.dim() != 3 or x_s.shape[-1] != self.student_dim:
                raise ValueError(
                    f"loss 'token_nce': student tokens of layer {i} must be "
                    f"[B, N, {self.student_dim}] (student_dim), got {tuple(x_s.shape)}"
                )
            if x_t.dim() != 3 or x_t.shape[-1] != self.teacher_dim or x_t.shape[0] != x_s.shape[0]:
                raise ValueError(
                    f"loss 'token_nce': teacher tokens of layer {j} must be "
                    f"[{x_s.shape[0]}, N, {self.teacher_dim}] (teacher_dim), got {tuple(x_t.shape)}"
                )
            grid = grid_size(x_s.shape[1], "student tokens")
            q = F.normalize(self.proj(x_s.float()).float(), dim=-1)  # [B, N, D_t]
            k = F.normalize(interpolate_tokens(x_t, grid), dim=-1)  # [B, N, D_t]
            logits = torch.einsum("bnd,bmd->bnm", q, k)  # column n is the positive of row n
            if negatives.shape[0] > 0:
                queue_logits = q @ negatives.to(q.device, q.dtype).T  # [B, N, count]
                logits = torch.cat([logits, queue_logits], dim=-1)
            b, n = q.shape[:2]
            target = torch.arange(n, device=q.device).repeat(b)
            terms.append(F.cross_entropy(logits.reshape(b * n, -1) / self.tau, target))
            keys.append(k.reshape(b * n, -1))
        if self.training and self.queue_size > 0:
            self._enqueue(torch.cat(keys))
        return {"token_nce_loss": torch.stack(terms).mean()}

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` [K, D_t] into the ring buffer at ``queue_ptr`` (FIFO)."""
        size, total = self.queue_size, keys.shape[0]
        ptr = int(self.queue_ptr)
        if total > size:  # only the newest `size` survive; they end where they would have
            ptr = (ptr + total - size) % size
            keys = keys[-size:]
        idx = (ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[idx] = keys.to(self.queue.device, self.queue.dtype)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)
        self.queue_count.fill_(min(int(self.queue_count) + total, size))

    @staticmethod
    def example_kwargs() -> dict:
        """Constructor kwargs matching ``example_inputs`` (student 6-d, teacher 10-d)."""
        return {"student_dim": 6, "teacher_dim": 10, "queue_size": 64}

    @staticmethod
    def example_inputs(b: int = 2, seed: int = 0) -> tuple[dict, dict, dict]:
        """Random inputs: student 2 layers of 6-d tokens on a 2x2 grid, teacher 3 layers of
        10-d tokens on a 4x4 grid. Only ``student["tokens"]`` requires grad."""
        return _example_inputs("tokens", b=b, d_s=6, d_t=10, seed=seed)
