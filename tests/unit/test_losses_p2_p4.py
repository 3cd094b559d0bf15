"""Golden values, gradients, label-independence and resampling of the cap, P2 and P4 losses."""

from __future__ import annotations


import pytest
import torch
from hand_math import ce, kl, lse

from vldistill.trainers.losses import LOSSES, WeightedLoss, build_loss
from vldistill.trainers.losses import cap, p2, p4  # noqa: F401  (importing registers them)
from vldistill.trainers.losses.p4 import (
    default_layer_map,
    grid_size,
    interpolate_attention,
    interpolate_tokens,
)

TAU = 0.5
SCALE = 2.0  # logit_scale for the hand cases: logits stay readable (2 * cos)
T = 0.5  # P2 temperature for the hand cases: effective factor SCALE / T = 4

# D=2, B=2. Raw student [3, 4] and [0, 2] normalise to s0 = [0.6, 0.8] and s1 = [0, 1].
S_RAW = [[3.0, 4.0], [0.0, 2.0]]
T_IMG = [[1.0, 0.0], [0.6, 0.8]]  # teacher images t0, t1 (normalised)
SENT = [[1.0, 0.0], [0.0, 1.0]]  # M=2 unpaired sentences z0, z1 (normalised)
P2_NAMES = ["vld", "pvld", "udist"]
NEW_NAMES = ["cap", *P2_NAMES, "attn", "token_nce"]


_lse, _ce, _kl = lse, ce, kl  # shared hand formulas (hand_math.py)


def _f(xs: list[float], factor: float = SCALE / T) -> list[float]:
    return [factor * x for x in xs]


def _p2_inputs(embed=S_RAW, image=T_IMG, sent=SENT, batch=None):
    student = {"embed": torch.tensor(embed, requires_grad=True)}
    teacher = {"image_embed": torch.tensor(image), "sentence_embed": torch.tensor(sent)}
    return student, teacher, {} if batch is None else batch


def _example(name: str):
    """(loss, (student, teacher, batch)) from the loss class's own example hooks."""
    cls = LOSSES[name]
    kwargs = cls.example_kwargs() if hasattr(cls, "example_kwargs") else {}
    return build_loss(name, **kwargs), cls.example_inputs()


def _student_leaves(student: dict) -> list[torch.Tensor]:
    leaves = []
    for value in student.values():
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                leaves.append(t)
    return leaves


# --- cap -----------------------------------------------------------------------------------


def test_cap_matches_hand_value():
    # captions c0 = [0.6, 0.8], c1 = [1, 0]; logits[i, j] = cos(s_i, c_j)/tau:
    # s0 -> [1.0, 0.6], s1 -> [0.8, 0.0]
    rows = _ce([1.0 / TAU, 0.6 / TAU], 0) + _ce([0.8 / TAU, 0.0], 1)
    cols = _ce([1.0 / TAU, 0.8 / TAU], 0) + _ce([0.6 / TAU, 0.0], 1)
    student = {"embed": torch.tensor(S_RAW, requires_grad=True)}
    teacher = {"caption_embed": torch.tensor([[0.6, 0.8], [1.0, 0.0]])}
    out = build_loss("cap", tau=TAU)(student, teacher, {})
    assert set(out) == {"cap_loss"}
    assert out["cap_loss"].item() == pytest.approx((rows / 2 + cols / 2) / 2, rel=1e-6)


def test_cap_without_caption_embed_raises_naming_it():
    student = {"embed": torch.tensor(S_RAW)}
    with pytest.raises(ValueError, match="caption_embed"):
        build_loss("cap")(student, {"image_embed": torch.tensor(T_IMG)}, {})


# --- P2 golden values ----------------------------------------------------------------------

# image -> sentence logits (cosines): teacher t0 -> [1, 0], t1 -> [0.6, 0.8];
# student s0 -> [0.6, 0.8], s1 -> [0, 1]
VLD_I2S = (_kl(_f([1.0, 0.0]), _f([0.6, 0.8])) + _kl(_f([0.6, 0.8]), _f([0.0, 1.0]))) / 2
# sentence -> image (columns): z0: teacher [1, 0.6], student [0.6, 0]; z1: teacher [0, 0.8],
# student [0.8, 1]
VLD_S2I = (_kl(_f([1.0, 0.6]), _f([0.6, 0.0])) + _kl(_f([0.0, 0.8]), _f([0.8, 1.0]))) / 2


def test_vld_one_direction_matches_hand_value():
    loss = build_loss("vld", temperature=T, logit_scale=SCALE, both_directions=False)
    out = loss(*_p2_inputs())
    assert set(out) == {"vld_loss"}
    assert out["vld_loss"].item() == pytest.approx(VLD_I2S, rel=1e-5)


def test_vld_both_directions_averages_the_two_hand_values():
    loss = build_loss("vld", temperature=T, logit_scale=SCALE, both_directions=True)
    out = loss(*_p2_inputs())
    assert out["vld_loss"].item() == pytest.approx((VLD_I2S + VLD_S2I) / 2, rel=1e-5)


def test_vld_default_scale_100_and_no_t_squared():
    # defaults: logit_scale 100, T = 1, both directions; T=2 must NOT be rescaled by T^2
    i2s = (_kl(_f([1, 0], 100), _f([0.6, 0.8], 100)) + _kl(_f([0.6, 0.8], 100), _f([0, 1], 100)))
    s2i = (_kl(_f([1, 0.6], 100), _f([0.6, 0], 100)) + _kl(_f([0, 0.8], 100), _f([0.8, 1], 100)))
    out = build_loss("vld")(*_p2_inputs())
    assert out["vld_loss"].item() == pytest.approx((i2s / 2 + s2i / 2) / 2, rel=1e-4)
    i2s_t2 = _kl(_f([1, 0], 50), _f([0.6, 0.8], 50)) + _kl(_f([0.6, 0.8], 50), _f([0, 1], 50))
    out = build_loss("vld", temperature=2.0, both_directions=False)(*_p2_inputs())
    assert out["vld_loss"].item() == pytest.approx(i2s_t2 / 2, rel=1e-4)


def test_pvld_matches_hand_value():
    # pseudo-sentences = teacher images: teacher t0 -> [1, 0.6], t1 -> [0.6, 1];
    # student s0 -> [0.6, 1.0], s1 -> [0, 0.8]
    expected = (_kl(_f([1.0, 0.6]), _f([0.6, 1.0])) + _kl(_f([0.6, 1.0]), _f([0.0, 0.8]))) / 2
    out = build_loss("pvld", temperature=T, logit_scale=SCALE)(*_p2_inputs())
    assert set(out) == {"pvld_loss"}
    assert out["pvld_loss"].item() == pytest.approx(expected, rel=1e-5)


# udist needs B=3 so that a row keeps two entries once its diagonal is masked.
T3 = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
S3_RAW = [[3.0, 4.0], [0.0, 2.0], [5.0, 0.0]]  # -> [0.6, 0.8], [0, 1], [1, 0]


def test_udist_masks_the_diagonal_and_matches_hand_value():
    # off-diagonal cosines. teacher: row0 [t0.t1, t0.t2] = [0, 0.6], row1 [0, 0.8],
    # row2 [0.6, 0.8]; student: row0 [s0.s1, s0.s2] = [0.8, 0.6], row1 [0.8, 0], row2 [0.6, 0]
    masked = (
        _kl(_f([0.0, 0.6]), _f([0.8, 0.6]))
        + _kl(_f([0.0, 0.8]), _f([0.8, 0.0]))
        + _kl(_f([0.6, 0.8]), _f([0.6, 0.0]))
    ) / 3
    unmasked = (  # what keeping the self-similarity 1 would give: must differ
        _kl(_f([1.0, 0.0, 0.6]), _f([1.0, 0.8, 0.6]))
        + _kl(_f([0.0, 1.0, 0.8]), _f([0.8, 1.0, 0.0]))
        + _kl(_f([0.6, 0.8, 1.0]), _f([0.6, 0.0, 1.0]))
    ) / 3
    out = build_loss("udist", temperature=T, logit_scale=SCALE)(
        *_p2_inputs(embed=S3_RAW, image=T3)
    )
    assert set(out) == {"udist_loss"}
    assert out["udist_loss"].item() == pytest.approx(masked, rel=1e-5)
    assert abs(masked - unmasked) > 1e-2


def test_udist_single_image_is_zero_and_attached():
    student, teacher, batch = _p2_inputs(embed=[[3.0, 4.0]], image=[[1.0, 0.0]])
    out = build_loss("udist")(student, teacher, batch)
    assert out["udist_loss"].item() == 0.0
    out["udist_loss"].backward()  # attached to the graph, so backward does not fail


@pytest.mark.parametrize("name", P2_NAMES)
def test_p2_loss_is_zero_when_student_matches_teacher(name):
    out = build_loss(name)(*_p2_inputs(embed=T_IMG))
    assert out[f"{name}_loss"].item() == pytest.approx(0.0, abs=1e-6)


# --- P2 label independence and gradients ---------------------------------------------------


@pytest.mark.parametrize("name", P2_NAMES)
def test_p2_loss_ignores_labels(name):
    loss = build_loss(name, temperature=T, logit_scale=SCALE)
    without = loss(*_p2_inputs(batch={}))[f"{name}_loss"]
    with_label = loss(*_p2_inputs(batch={"label": torch.tensor([1, 0])}))[f"{name}_loss"]
    assert with_label.item() == without.item()


def test_vld_missing_sentence_bank_raises_naming_it():
    student, teacher, _ = _p2_inputs()
    del teacher["sentence_embed"]
    with pytest.raises(ValueError, match="sentence_embed"):
        build_loss("vld")(student, teacher, {})


@pytest.mark.parametrize("name", ["cap", *P2_NAMES])
def test_gradient_reaches_student_embedding(name):
    loss, (student, teacher, batch) = _example(name)
    assert batch == {}
    loss(student, teacher, batch)[f"{name}_loss"].backward()
    grad = student["embed"].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_composer_runs_dime_fm_weights_without_labels():
    student, teacher, batch = p2.VLDistillLoss.example_inputs()
    composer = WeightedLoss({"vld": 0.7, "pvld": 0.3, "udist": 0.0})
    total, logs = composer(student, teacher, batch)
    expected = 0.7 * logs["vld_loss"] + 0.3 * logs["pvld_loss"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert "udist_loss" not in logs


# --- P4: layer maps and resampling ---------------------------------------------------------


@pytest.mark.parametrize(
    ("n_s", "n_t", "expected"),
    [(2, 4, [(0, 1), (1, 3)]), (4, 6, [(0, 1), (1, 2), (2, 4), (3, 5)]),
     (3, 3, [(0, 0), (1, 1), (2, 2)]), (4, 2, [(0, 0), (1, 0), (2, 1), (3, 1)]),
     (1, 12, [(0, 11)]),
     # more than twice the teacher's layers: the first ones map to teacher layer 0, not -1
     # (round((i+1) * 2/12) - 1: 0 up to i = 7, where (i+1)/6 < 1.5)
     (12, 2, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 1), (9, 1),
              (10, 1), (11, 1)]),
     (3, 1, [(0, 0), (1, 0), (2, 0)])],
)
def test_default_layer_map_is_evenly_spaced_rounding_halves_up(n_s, n_t, expected):
    assert default_layer_map(n_s, n_t) == expected


def test_grid_size_rejects_non_square_token_count():
    assert grid_size(17) == 4
    with pytest.raises(ValueError, match="square"):
        grid_size(16)


def test_interpolate_tokens_keeps_cls_and_constant_patches():
    tokens = torch.empty(2, 17, 3)
    tokens[:, 0] = torch.tensor([9.0, -9.0, 1.0])
    tokens[:, 1:] = torch.tensor([0.5, 2.0, -1.0])
    out = interpolate_tokens(tokens, 2)
    assert out.shape == (2, 5, 3)
    assert torch.equal(out[:, 0], tokens[:, 0])
    assert torch.allclose(out[:, 1:], torch.tensor([0.5, 2.0, -1.0]).expand(2, 4, 3))
    assert interpolate_tokens(tokens, 4) is tokens


def test_interpolate_tokens_2x2_to_1x1_averages_the_patches():
    tokens = torch.tensor([[[7.0], [1.0], [2.0], [3.0], [6.0]]])  # CLS 7, patches 1 2 / 3 6
    assert interpolate_tokens(tokens, 1).flatten().tolist() == pytest.approx([7.0, 3.0])


def test_interpolate_attention_keeps_uniform_and_cls_only_maps():
    uniform = torch.full((1, 2, 17, 17), 1 / 17)
    assert torch.allclose(interpolate_attention(uniform, 2), torch.full((1, 2, 5, 5), 0.2))
    cls_only = torch.zeros(1, 1, 17, 17)
    cls_only[..., 0] = 1.0
    expected = torch.zeros(1, 1, 5, 5)
    expected[..., 0] = 1.0
    assert torch.allclose(interpolate_attention(cls_only, 2), expected)


@pytest.mark.parametrize(("n", "grid"), [(4, 2), (2, 4), (4, 3)])
def test_interpolated_attention_rows_sum_to_one(n, grid):
    attn = torch.randn(2, 3, 1 + n * n, 1 + n * n, generator=torch.Generator().manual_seed(0))
    out = interpolate_attention(attn.softmax(dim=-1), grid)
    assert out.shape == (2, 3, 1 + grid * grid, 1 + grid * grid)
    assert (out >= 0).all()
    assert torch.allclose(out.sum(dim=-1), torch.ones(2, 3, 1 + grid * grid))


# --- P4: attn ------------------------------------------------------------------------------

S_ATTN = [[0.7, 0.3], [0.4, 0.6]]  # one 1x1-grid map (CLS + 1 patch)


def _maps(*heads: list[list[float]]) -> torch.Tensor:
    """[1, H, N, N] from H maps."""
    return torch.tensor([list(heads)])


def test_attn_averages_heads_and_matches_hand_value():
    # student heads average to S_ATTN; teacher heads average to [[0.4, 0.6], [0.3, 0.7]]
    student = {"attn": [_maps([[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]], S_ATTN)]}
    teacher = {"attn": [_maps([[0.5, 0.5], [0.2, 0.8]], [[0.3, 0.7], [0.4, 0.6]])]}
    out = build_loss("attn")(student, teacher, {})
    # diffs 0.3, -0.3, 0.1, -0.1
    assert set(out) == {"attn_loss"}
    assert out["attn_loss"].item() == pytest.approx((0.09 + 0.09 + 0.01 + 0.01) / 4, rel=1e-5)


def test_attn_resamples_teacher_grid_and_matches_hand_value():
    # teacher: CLS + 2x2 patches. Step 1 (keys -> 1x1: mean of the 4 patch keys) gives rows
    # cls [0.2, 0.2], p1 [0.6, 0.1], p2 [0.2, 0.2], p3 [0.4, 0.15], p4 [0.0, 0.25];
    # step 2 (patch queries -> 1x1: their mean) gives [0.3, 0.175]; step 3 renormalises.
    teacher_map = [
        [0.2, 0.2, 0.2, 0.2, 0.2],
        [0.6, 0.1, 0.1, 0.1, 0.1],
        [0.2, 0.5, 0.1, 0.1, 0.1],
        [0.4, 0.3, 0.1, 0.1, 0.1],
        [0.0, 0.25, 0.25, 0.25, 0.25],
    ]
    a_t = [0.5, 0.5, 0.3 / 0.475, 0.175 / 0.475]
    a_s = [0.7, 0.3, 0.4, 0.6]
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 4
    out = build_loss("attn")({"attn": [_maps(S_ATTN)]}, {"attn": [_maps(teacher_map)]}, {})
    assert out["attn_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_attn_averages_over_default_and_explicit_layer_maps():
    junk = [[1.0, 0.0], [1.0, 0.0]]  # vs S_ATTN: diffs 0.3, 0.3, 0.6, 0.6 -> mse 0.225
    teacher_a = [[0.4, 0.6], [0.3, 0.7]]  # vs S_ATTN: mse 0.05
    student = {"attn": [_maps(S_ATTN), _maps(S_ATTN)]}
    teacher = {"attn": [_maps(junk), _maps(teacher_a), _maps(S_ATTN)]}
    # default map for 2 -> 3 layers: [(0, 1), (1, 2)] -> (0.05 + 0) / 2
    out = build_loss("attn")(student, teacher, {})
    assert out["attn_loss"].item() == pytest.approx(0.025, rel=1e-5)
    out = build_loss("attn", layer_map=[(0, 0), (1, 1)])(student, teacher, {})
    assert out["attn_loss"].item() == pytest.approx((0.225 + 0.05) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="layer_map"):
        build_loss("attn", layer_map=[(0, 3)])(student, teacher, {})


# --- P4: token_nce -------------------------------------------------------------------------


def _identity_token_nce(queue_size: int = 16) -> torch.nn.Module:
    loss = build_loss("token_nce", student_dim=2, teacher_dim=2, queue_size=queue_size, tau=TAU)
    with torch.no_grad():
        loss.proj.weight.copy_(torch.eye(2))
        loss.proj.bias.zero_()
    return loss


def _nce_inputs(teacher_tokens=((2.0, 0.0), (0.0, 3.0))):
    # one image, CLS + 1x1 grid; student -> q0 = [0.6, 0.8], q1 = [0, 1]
    student = {"tokens": [torch.tensor([S_RAW], requires_grad=True)]}
    teacher = {"tokens": [torch.tensor([teacher_tokens])]}  # normalised: k0 = [1,0], k1 = [0,1]
    return student, teacher, {}


# empty queue: token 0 logits [q0.k0, q0.k1]/tau = [0.6, 0.8]/tau, token 1 [0, 1]/tau
NCE_EMPTY = (_ce([0.6 / TAU, 0.8 / TAU], 0) + _ce([0.0, 1.0 / TAU], 1)) / 2
# queue = [k0, k1] after one training call: each row gets the same two logits again
NCE_QUEUED = (_ce([0.6 / TAU, 0.8 / TAU] * 2, 0) + _ce([0.0, 1.0 / TAU] * 2, 1)) / 2


def test_token_nce_empty_queue_matches_hand_value_then_uses_queue():
    loss = _identity_token_nce()
    out = loss(*_nce_inputs())
    assert set(out) == {"token_nce_loss"}
    assert out["token_nce_loss"].item() == pytest.approx(NCE_EMPTY, rel=1e-5)
    assert int(loss.queue_count) == 2
    out = loss(*_nce_inputs())
    assert out["token_nce_loss"].item() == pytest.approx(NCE_QUEUED, rel=1e-5)


def test_token_nce_eval_mode_leaves_queue_untouched():
    loss = _identity_token_nce().eval()
    for _ in range(2):
        out = loss(*_nce_inputs())
        assert out["token_nce_loss"].item() == pytest.approx(NCE_EMPTY, rel=1e-5)
    assert int(loss.queue_ptr) == 0 and int(loss.queue_count) == 0


def test_token_nce_queue_pointer_advances_by_enqueued_tokens():
    loss, (student, teacher, batch) = _example("token_nce")  # queue_size 64
    per_call = 2 * 2 * 5  # 2 mapped pairs x batch 2 x (CLS + 2x2) student-grid tokens
    loss(student, teacher, batch)
    loss(student, teacher, batch)
    assert int(loss.queue_ptr) == 2 * per_call and int(loss.queue_count) == 2 * per_call
    loss.eval()
    loss(student, teacher, batch)
    assert int(loss.queue_ptr) == 2 * per_call
    loss.train()
    loss(student, teacher, batch)
    loss(student, teacher, batch)  # 80 tokens in a 64-slot ring: wraps around
    assert int(loss.queue_ptr) == 4 * per_call % 64 and int(loss.queue_count) == 64
    assert torch.allclose(loss.queue.norm(dim=-1), torch.ones(64))


def test_token_nce_queue_is_fifo_ring():
    loss = _identity_token_nce(queue_size=3)
    loss(*_nce_inputs(((2.0, 0.0), (0.0, 3.0))))  # k0=[1,0] -> slot 0, k1=[0,1] -> slot 1
    loss(*_nce_inputs(((-1.0, 0.0), (0.0, -4.0))))  # [-1,0] -> slot 2, [0,-1] -> slot 0
    assert loss.queue.tolist() == [[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]]
    assert int(loss.queue_ptr) == 1 and int(loss.queue_count) == 3
    small = _identity_token_nce(queue_size=1)
    small(*_nce_inputs())  # 2 tokens into 1 slot: only the newest (k1) is kept
    assert small.queue.tolist() == [[0.0, 1.0]] and int(small.queue_ptr) == 0


def test_token_nce_different_grids_run_and_reach_student_tokens_and_projection():
    loss, (student, teacher, batch) = _example("token_nce")
    assert student["tokens"][0].shape[1] == 5 and teacher["tokens"][0].shape[1] == 17
    out = loss(student, teacher, batch)
    out["token_nce_loss"].backward()
    for tokens in student["tokens"]:
        assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert loss.proj.weight.grad.abs().sum() > 0
    assert {name for name, _ in loss.named_parameters()} == {"proj.weight", "proj.bias"}
    assert {"queue", "queue_ptr", "queue_count"} <= set(loss.state_dict())


def test_attn_different_grids_reach_student_attention():
    loss, (student, teacher, batch) = _example("attn")
    assert student["attn"][0].shape[-1] == 5 and teacher["attn"][0].shape[-1] == 17
    loss(student, teacher, batch)["attn_loss"].backward()
    for attn in student["attn"]:
        assert attn.grad is not None and attn.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "key"), [("attn", "attn"), ("token_nce", "tokens")])
def test_p4_missing_layers_raise_naming_key(name, key):
    loss, (student, teacher, batch) = _example(name)
    del teacher[key]
    with pytest.raises(ValueError, match=key):
        loss(student, teacher, batch)


# --- registry, example hooks and constructor validation ------------------------------------


@pytest.mark.parametrize("name", NEW_NAMES)
def test_example_inputs_give_finite_scalar_and_gradients_to_every_marked_leaf(name):
    loss, (student, teacher, batch) = _example(name)
    out = loss(student, teacher, batch)
    keys = [k for k in out if k.endswith("_loss")]
    assert keys == [f"{name}_loss"]
    assert out[keys[0]].dim() == 0 and torch.isfinite(out[keys[0]])
    out[keys[0]].backward()
    leaves = _student_leaves(student)
    assert leaves
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [("cap", {"tau": 0.0}, "tau"),
     ("vld", {"temperature": 0.0}, "temperature"),
     ("vld", {"logit_scale": -1.0}, "logit_scale"),
     ("vld", {"both_directions": "yes"}, "both_directions"),
     ("pvld", {"temperature": float("nan")}, "temperature"),
     ("udist", {"logit_scale": 0.0}, "logit_scale"),
     ("attn", {"layer_map": [(0, -1)]}, "layer_map"),
     ("attn", {"layer_map": []}, "layer_map"),
     ("token_nce", {"student_dim": 0, "teacher_dim": 2}, "student_dim"),
     ("token_nce", {"student_dim": 2, "teacher_dim": 0}, "teacher_dim"),
     ("token_nce", {"student_dim": 2, "teacher_dim": 2, "queue_size": -1}, "queue_size"),
     ("token_nce", {"student_dim": 2, "teacher_dim": 2, "tau": 0.0}, "tau"),
     ("token_nce", {"student_dim": 2, "teacher_dim": 2, "layer_map": [(1,)]}, "layer_map")],
)
def test_constructor_rejects_bad_args(name, kwargs, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        build_loss(name, **kwargs)


def test_new_losses_are_registered():
    assert set(NEW_NAMES) <= set(LOSSES)
