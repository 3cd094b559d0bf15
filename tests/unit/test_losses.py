"""Golden values, gradients and composition of the distillation losses (P1)."""

from __future__ import annotations


import pytest
import torch
from hand_math import ce, kl, lse

from vldistill.trainers.losses import LOSSES, WeightedLoss, build_loss

TAU = 0.5  # a mild temperature keeps the hand-computed exponentials readable

# Hand-built tiny case, D=2, B=2, C=2. Raw student embeddings [3, 4] and [0, 2] normalise to
# [0.6, 0.8] and [0, 1]; teacher images are the axes; class texts are the axes too.
S_RAW = [[3.0, 4.0], [0.0, 2.0]]
T_IMG = [[1.0, 0.0], [0.0, 1.0]]
T_TXT = [[1.0, 0.0], [0.0, 1.0]]
LABEL = [0, 1]


_lse, _ce, _kl = lse, ce, kl  # shared hand formulas (hand_math.py)


def _inputs(embed=S_RAW, image=T_IMG, text=T_TXT, label=LABEL, vocab=None):
    student = {"embed": torch.tensor(embed, requires_grad=True)}
    teacher = {"image_embed": torch.tensor(image), "text_embed": torch.tensor(text)}
    if vocab is not None:
        teacher["vocab_embed"] = torch.tensor(vocab)
    batch = {"label": torch.tensor(label)} if label is not None else {}
    return student, teacher, batch


def _random_inputs(b: int = 4, d: int = 8, c: int = 5, v: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.functional.normalize
    image = norm(torch.randn(b, d, generator=g), dim=-1)
    text = norm(torch.randn(c, d, generator=g), dim=-1)
    vocab = norm(torch.randn(v, d, generator=g), dim=-1)
    # labels = the teacher's prediction, so vlprox's filter keeps every image
    label = (image @ text.T).argmax(dim=-1)
    student = {"embed": torch.randn(b, d, generator=g).requires_grad_(True)}
    teacher = {"image_embed": image, "text_embed": text, "vocab_embed": vocab}
    return student, teacher, {"label": label}


# --- golden values ---------------------------------------------------------------------


def test_cls_matches_hand_value():
    # logits: image 0 -> [0.6, 0.8]/tau (label 0); image 1 -> [0, 1]/tau (label 1)
    expected = (_ce([0.6 / TAU, 0.8 / TAU], 0) + _ce([0.0, 1.0 / TAU], 1)) / 2
    out = build_loss("cls", tau=TAU)(*_inputs())
    assert set(out) == {"cls_loss"}
    assert out["cls_loss"].item() == pytest.approx(expected, rel=1e-6)


def test_mse_matches_hand_value():
    # image 0: [0.6, 0.8] - [1, 0] = [-0.4, 0.8] -> 0.16 + 0.64 = 0.8; image 1: 0
    out = build_loss("mse")(*_inputs())
    assert out["mse_loss"].item() == pytest.approx(0.4, rel=1e-6)


def test_im_cst_matches_hand_value():
    # logits[i, j] = cos(S_i, T_j)/tau = [[0.6, 0.8], [0, 1]] / tau
    rows = _ce([0.6 / TAU, 0.8 / TAU], 0) + _ce([0.0, 1.0 / TAU], 1)
    cols = _ce([0.6 / TAU, 0.0], 0) + _ce([0.8 / TAU, 1.0 / TAU], 1)
    expected = (rows / 2 + cols / 2) / 2
    out = build_loss("im_cst", tau=TAU)(*_inputs())
    assert out["im_cst_loss"].item() == pytest.approx(expected, rel=1e-6)


# vlprox case: vocabulary v0=[1,0], v1=[0,1], v2=[0.6,0.8]; student images [0,1] and
# [0.6,0.8]; teacher images the axes (teacher logits [1, 0, 0.6] and [0, 1, 0.8]).
VOCAB = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
S_VL = [[0.0, 5.0], [3.0, 4.0]]
# student logits: image 0 -> [0, 1, 0.8]; image 1 -> [0.6, 0.8, 1.0]
KL0_FULL = _kl([1 / TAU, 0.0, 0.6 / TAU], [0.0, 1 / TAU, 0.8 / TAU])
KL1_FULL = _kl([0.0, 1 / TAU, 0.8 / TAU], [0.6 / TAU, 0.8 / TAU, 1.0 / TAU])
# k=2: teacher top-2 are {v0, v2} for image 0 and {v1, v2} for image 1
KL0_K2 = _kl([1 / TAU, 0.6 / TAU], [0.0, 0.8 / TAU])
KL1_K2 = _kl([1 / TAU, 0.8 / TAU], [0.8 / TAU, 1.0 / TAU])


def test_vlprox_k_capped_at_vocab_matches_hand_value():
    loss = build_loss("vlprox", k=256, tau=TAU, filter=True)
    out = loss(*_inputs(embed=S_VL, vocab=VOCAB))
    assert out["vlprox_loss"].item() == pytest.approx((KL0_FULL + KL1_FULL) / 2, rel=1e-5)


def test_vlprox_k_smaller_than_vocab_matches_hand_value():
    loss = build_loss("vlprox", k=2, tau=TAU, filter=True)
    out = loss(*_inputs(embed=S_VL, vocab=VOCAB))
    assert out["vlprox_loss"].item() == pytest.approx((KL0_K2 + KL1_K2) / 2, rel=1e-5)


def test_vlprox_filter_drops_misclassified_image_but_divides_by_batch():
    # the teacher predicts class 1 for image 1; label 0 makes it wrong -> only image 0 counts
    loss = build_loss("vlprox", k=2, tau=TAU, filter=True)
    out = loss(*_inputs(embed=S_VL, vocab=VOCAB, label=[0, 0]))
    assert out["vlprox_loss"].item() == pytest.approx(KL0_K2 / 2, rel=1e-5)
    unfiltered = build_loss("vlprox", k=2, tau=TAU, filter=False)
    out = unfiltered(*_inputs(embed=S_VL, vocab=VOCAB, label=[0, 0]))
    assert out["vlprox_loss"].item() == pytest.approx((KL0_K2 + KL1_K2) / 2, rel=1e-5)


def test_vlprox_falls_back_to_text_embed_without_vocab():
    # vocabulary = class texts (axes), k=2 = all of it
    kl0 = _kl([1 / TAU, 0.0], [0.0, 1 / TAU])
    kl1 = _kl([0.0, 1 / TAU], [0.6 / TAU, 0.8 / TAU])
    expected = (kl0 + kl1) / 2
    out = build_loss("vlprox", tau=TAU)(*_inputs(embed=S_VL))
    assert out["vlprox_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_vlprox_is_zero_when_student_matches_teacher():
    loss = build_loss("vlprox", k=2, tau=TAU, filter=False)
    out = loss(*_inputs(embed=T_IMG, vocab=VOCAB))
    assert out["vlprox_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_vlprox_filter_without_labels_raises():
    with pytest.raises(ValueError, match="label"):
        build_loss("vlprox")(*_inputs(label=None))
    out = build_loss("vlprox", filter=False)(*_inputs(label=None))
    assert torch.isfinite(out["vlprox_loss"])


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [("cls", {"tau": 0.0}, "tau"), ("im_cst", {"tau": -1.0}, "tau"),
     ("vlprox", {"tau": 0.0}, "tau"), ("vlprox", {"k": 0}, "k")],
)
def test_constructor_rejects_bad_args(name, kwargs, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        build_loss(name, **kwargs)


# --- every registered loss ---------------------------------------------------------------


def _example(name):
    """A loss and inputs it accepts: its own ``example_inputs()``, else random P1 inputs."""
    cls = LOSSES[name]
    kwargs = cls.example_kwargs() if hasattr(cls, "example_kwargs") else {}
    inputs = cls.example_inputs() if hasattr(cls, "example_inputs") else _random_inputs()
    return build_loss(name, **kwargs), inputs


def _grad_leaves(student):
    return [t for v in student.values() for t in (v if isinstance(v, (list, tuple)) else [v])
            if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registered_loss_returns_finite_scalar_loss_term(name):
    loss, inputs = _example(name)
    out = loss(*inputs)
    keys = [k for k in out if k.endswith("_loss")]
    assert keys, f"{name} returned no _loss key: {list(out)}"
    for key in keys:
        assert out[key].dim() == 0
        assert torch.isfinite(out[key])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_student(name):
    loss, (student, teacher, batch) = _example(name)
    sum(v for k, v in loss(student, teacher, batch).items() if k.endswith("_loss")).backward()
    leaves = _grad_leaves(student)
    assert leaves
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


# --- registry and composer ---------------------------------------------------------------


def test_p1_losses_are_registered():
    assert {"cls", "mse", "im_cst", "vlprox"} <= set(LOSSES)


def test_unknown_loss_name_lists_known_names():
    with pytest.raises(ValueError, match="nope") as err:
        build_loss("nope")
    assert str(sorted(LOSSES)) in str(err.value)
    with pytest.raises(ValueError, match="nope"):
        WeightedLoss({"cls": 1.0, "nope": 1.0})


def test_unknown_kwarg_names_loss_and_kwarg():
    with pytest.raises(ValueError, match="vlprox") as err:
        build_loss("vlprox", kk=3)
    assert "kk" in str(err.value) and "'k'" in str(err.value)
    with pytest.raises(ValueError, match="kk"):
        WeightedLoss({"vlprox": 1.0}, kwargs={"vlprox": {"kk": 3}})


def test_zero_weight_contributes_nothing_and_is_not_logged():
    student, teacher, batch = _random_inputs()
    composer = WeightedLoss({"cls": 1.0, "mse": 0.0, "im_cst": 2.0})
    assert composer.names == ["cls", "im_cst"]
    assert "mse" not in composer.terms
    total, logs = composer(student, teacher, batch)
    cls = build_loss("cls")(student, teacher, batch)["cls_loss"]
    im = build_loss("im_cst")(student, teacher, batch)["im_cst_loss"]
    assert total.item() == pytest.approx((cls + 2.0 * im).item(), rel=1e-6)
    assert "mse_loss" not in logs and "weighted/mse_loss" not in logs
    assert logs["cls_loss"] == pytest.approx(cls.item(), rel=1e-6)
    assert logs["weighted/im_cst_loss"] == pytest.approx(2.0 * im.item(), rel=1e-6)
    assert logs["im_cst_loss"] == pytest.approx(im.item(), rel=1e-6)
    assert logs["loss"] == pytest.approx(total.item(), rel=1e-6)
    assert all(isinstance(v, float) for v in logs.values())


def test_weights_multiply_the_term():
    args = _inputs()
    total, logs = WeightedLoss({"mse": 3.0})(*args)
    assert total.item() == pytest.approx(3.0 * 0.4, rel=1e-6)
    assert logs["mse_loss"] == pytest.approx(0.4, rel=1e-6)
    assert logs["weighted/mse_loss"] == pytest.approx(1.2, rel=1e-6)


def test_composer_passes_kwargs_and_backpropagates():
    student, teacher, batch = _inputs(embed=S_VL, vocab=VOCAB)
    total, logs = WeightedLoss({"vlprox": 1.0}, kwargs={"vlprox": {"k": 2, "tau": TAU}})(
        student, teacher, batch
    )
    assert logs["vlprox_loss"] == pytest.approx((KL0_K2 + KL1_K2) / 2, rel=1e-5)
    total.backward()
    assert student["embed"].grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_negative_or_non_finite_weight_raises_naming_loss(bad):
    with pytest.raises(ValueError, match="im_cst"):
        WeightedLoss({"cls": 1.0, "im_cst": bad})


def test_all_zero_weights_raise():
    with pytest.raises(ValueError, match="zero"):
        WeightedLoss({"cls": 0.0, "mse": 0.0})


def test_kwargs_for_unweighted_loss_raise():
    with pytest.raises(ValueError, match="vlprox"):
        WeightedLoss({"cls": 1.0}, kwargs={"vlprox": {"k": 2}})
