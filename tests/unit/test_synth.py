"""P3 synthesis: text from token embeddings, prompt strategies, image optimisation, cache.

The teacher is open_clip's ``vldistill-rn10t-tiny`` with seeded random weights
(``load_open_clip(name, None)``): no training, loads in well under a second. Its text
tower is a real open_clip transformer, which is all the prompt strategies need.
"""

from __future__ import annotations

import threading
from dataclasses import fields, replace

import pytest
import torch

from vldistill.trainers import synth as S
from vldistill.trainers.config import ConfigError
from vldistill.trainers.synth import SynthConfig
from vldistill.trainers.teachers import _quiet_create, load_open_clip

NAMES = ["red circle", "blue square", "green triangle", "yellow cross"]
# Small and fast: 16 px, few steps, two views per step.
FAST = SynthConfig(images_per_class=2, steps=12, cutouts=2, image_size=16, batch_size=16,
                   prompt_steps=25, pseudo_words=3)


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return load_open_clip("vldistill-rn10t-tiny", None)


def _plain(teacher, cfg=FAST):
    return teacher.encode_text([cfg.base_prompt.format(n) for n in NAMES])


# ----- text tower from token embeddings ----------------------------------------------------


@pytest.mark.parametrize("name,custom_text", [("vldistill-rn10t-tiny", False),
                                              ("vldistill-vit-tiny", False),
                                              ("vldistill-rn10t-tiny", True)])
def test_text_from_token_embeddings_equals_encode_text(name, custom_text):
    torch.manual_seed(0)
    model = _quiet_create(name, force_custom_text=custom_text).eval()
    assert hasattr(model, "text") == custom_text  # CustomTextCLIP keeps the tower in .text
    import open_clip
    tok = open_clip.get_tokenizer(name)(["a photo of a red circle.", "a sketch of a ring.", "x"])
    tower = model.text if custom_text else model
    with torch.no_grad():
        got = S.encode_text_from_embeddings(model, tower.token_embedding(tok), tok)
        want = model.encode_text(tok)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_a_real_word_in_the_style_slot_gives_the_plain_prompt(teacher):
    slots = S.PromptSlots(teacher, "a {style} of a {}.", NAMES)
    photo = S.word_embedding(teacher, "photo").expand(len(NAMES), -1)
    got = slots.embed_batched(torch.arange(len(NAMES)), photo)
    assert torch.allclose(got, _plain(teacher), atol=1e-5)


def test_style_slot_must_appear_once(teacher):
    with pytest.raises(ValueError, match="exactly once"):
        S.PromptSlots(teacher, "a {style} of a {}.", ["red * circle"])


# ----- prompt strategies ------------------------------------------------------------------


def test_none_targets_are_the_plain_prompt_identical_within_a_class(teacher):
    targets, labels, styles, _ = S.prompt_targets(teacher, NAMES, replace(FAST, strategy="none",
                                                                         images_per_class=3))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.allclose(targets, _plain(teacher)[labels], atol=1e-6)
    assert set(styles) == {"none"}


def test_mix_targets_differ_per_image_and_stay_nearest_their_class(teacher):
    cfg = replace(FAST, strategy="mix", images_per_class=4, mix_words=3)
    targets, labels, styles, _ = S.prompt_targets(teacher, NAMES, cfg)
    sim = targets @ targets.T
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    assert off.max() < 1 - 1e-4  # no two images share a target
    assert ((targets @ _plain(teacher).T).argmax(1) == labels).all()
    for s in styles:  # "0.41 cartoon + 0.33 toy + 0.26 photo": 3 distinct words, convex weights
        parts = [p.split(" ", 1) for p in s.split(" + ")]
        assert len({w for _, w in parts}) == 3 and all(w in cfg.styles for _, w in parts)
        assert sum(float(a) for a, _ in parts) == pytest.approx(1.0, abs=0.015)


def test_mix_of_one_repeated_word_equals_that_word(teacher):
    # Convex weights over the same embedding give that embedding back: the plain prompt.
    cfg = replace(FAST, strategy="mix", styles=["photo", "photo ", "photo  "], mix_words=2)
    targets, labels, _, _ = S.prompt_targets(teacher, NAMES, cfg)
    assert torch.allclose(targets, _plain(teacher)[labels], atol=1e-5)


def test_random_targets_are_seeded_and_distinct(teacher):
    cfg = replace(FAST, strategy="random", images_per_class=3)
    a, _, _, _ = S.prompt_targets(teacher, NAMES, cfg)
    b, _, _, _ = S.prompt_targets(teacher, NAMES, cfg)
    c, _, _, _ = S.prompt_targets(teacher, NAMES, replace(cfg, seed=1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert (a @ a.T)[~torch.eye(len(a), dtype=torch.bool)].max() < 1 - 1e-4


def test_contrastive_pseudo_words_end_further_apart_and_keep_the_class(teacher):
    cfg = replace(FAST, strategy="contrastive")
    _, stats = S.learn_pseudo_words(teacher, NAMES, cfg)
    assert stats["style_cos_final"] < stats["style_cos_init"] - 0.1
    assert stats["prompt_class_acc"] == 1.0
    # The separation comes from the contrastive term: without it styles stay closer.
    _, no_nce = S.learn_pseudo_words(teacher, NAMES, replace(cfg, contrastive_weight=0.0))
    assert no_nce["style_cos_final"] > stats["style_cos_final"] + 0.05


def test_contrastive_with_sampled_classes_per_step_still_separates_styles(teacher):
    _, stats = S.learn_pseudo_words(teacher, NAMES, replace(FAST, strategy="contrastive",
                                                            prompt_classes=2))
    assert stats["style_cos_final"] < stats["style_cos_init"] - 0.1
    assert stats["prompt_class_acc"] == 1.0


def test_contrastive_targets_cycle_the_learned_styles(teacher):
    cfg = replace(FAST, strategy="contrastive", images_per_class=4, pseudo_words=2)
    targets, labels, styles, stats = S.prompt_targets(teacher, NAMES, cfg)
    assert styles[:4] == ["pseudo#0", "pseudo#1", "pseudo#0", "pseudo#1"]
    assert torch.allclose(targets[0], targets[2]) and not torch.allclose(targets[0], targets[1])
    assert "style_cos_final" in stats


def test_mean_style_cosine_hand_value():
    # 2 styles x 1 class, orthogonal -> 0; identical -> 1.
    e = torch.eye(2)[:, None, :]
    assert S.mean_style_cosine(e) == 0.0
    assert S.mean_style_cosine(torch.cat([e[:1], e[:1]])) == 1.0


# ----- images ----------------------------------------------------------------------------


def test_total_variation_and_identity_augmentation_hand_values():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert S.total_variation(x).item() == pytest.approx(1.0)  # rows equal; columns differ by 1
    img = torch.rand(2, 3, 8, 8)
    views = S._augment(img, 3, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(views, img.repeat(3, 1, 1, 1))
    moved = S._augment(img, 1, 1.0, torch.Generator().manual_seed(0))
    assert moved.shape == img.shape and not torch.allclose(moved, img)


def test_synthesis_increases_the_image_text_cosine(teacher):
    targets = _plain(teacher)[torch.arange(len(NAMES)).repeat_interleave(2)]
    images, stats = S.synthesize_images(teacher, targets, replace(FAST, steps=20))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16)
    assert stats["cos_after"] > stats["cos_before"] + 0.05


def test_diversity_hand_values(teacher):
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert S._mean_offdiag(e) == pytest.approx(1 / 3)  # pairs: 0, 1, 0 (each counted twice)
    img = torch.rand(1, 3, 16, 16)
    same = img.repeat(3, 1, 1, 1)
    assert S.diversity(teacher, same) == pytest.approx(1.0, abs=1e-5)
    mixed = torch.cat([same[:2], torch.rand(2, 3, 16, 16)])
    labels = torch.tensor([0, 0, 1, 1])
    per = S.diversity(teacher, mixed, labels)
    other = S.diversity(teacher, mixed[2:])
    assert per == pytest.approx((1.0 + other) / 2, abs=1e-5)


# ----- synthesize: cache and determinism ---------------------------------------------------


def test_synthesize_caches_and_returns_identical_tensors(teacher, tmp_path):
    cfg = replace(FAST, strategy="mix")
    images, labels, meta = S.synthesize(teacher, NAMES, cfg, tmp_path, progress=False)
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert not meta["from_cache"] and 0 <= meta["zero_shot_acc"] <= 1
    assert meta["cos_after"] > meta["cos_before"]
    for key in ("diversity", "diversity_per_class"):
        assert -1 <= meta[key] <= 1
    path = tmp_path / "synthetic" / meta["key"] / "data.pt"
    assert path.is_file() and (path.parent / "meta.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "data.pt", "meta.json"]  # no tmp
    mtime = path.stat().st_mtime_ns
    again_images, again_labels, again = S.synthesize(teacher, NAMES, cfg, tmp_path, progress=False)
    assert again["from_cache"]
    assert torch.equal(again_images, images) and torch.equal(again_labels, labels)
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert again["diversity"] == meta["diversity"]


def test_concurrent_callers_build_once(teacher, tmp_path):
    cfg = replace(FAST, strategy="none", steps=6)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        S.synthesize(teacher, NAMES, cfg, tmp_path, progress=False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[2]["from_cache"] for r in results) == [False, True]
    assert torch.equal(results[0][0], results[1][0])


def test_cache_key_covers_config_classes_and_teacher():
    k = S.synth_key("t", NAMES, FAST)
    assert k == S.synth_key("t", list(NAMES), replace(FAST))
    assert k != S.synth_key("t", NAMES, replace(FAST, seed=1))
    assert k != S.synth_key("t", NAMES[::-1], FAST)
    assert k != S.synth_key("u", NAMES, FAST)


def test_synthesis_is_deterministic_from_the_seed(teacher, tmp_path):
    cfg = replace(FAST, strategy="random", steps=4)
    a, _, _ = S.synthesize(teacher, NAMES, cfg, tmp_path / "a", progress=False)
    b, _, _ = S.synthesize(teacher, NAMES, cfg, tmp_path / "b", progress=False)
    c, _, _ = S.synthesize(teacher, NAMES, replace(cfg, seed=3), tmp_path / "c", progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("change,key", [
    ({"strategy": "vqgan"}, "data.synthetic.strategy"),
    ({"images_per_class": 0}, "data.synthetic.images_per_class"),
    ({"steps": 0}, "data.synthetic.steps"),
    ({"lr": 0.0}, "data.synthetic.lr"),
    ({"tv_weight": -1.0}, "data.synthetic.tv_weight"),
    ({"augment": 1.5}, "data.synthetic.augment"),
    ({"image_size": 4}, "data.synthetic.image_size"),
    ({"prompt": "a photo of a {}."}, "data.synthetic.prompt"),
    ({"base_prompt": "a photo"}, "data.synthetic.base_prompt"),
    ({"strategy": "mix", "styles": ["photo"]}, "data.synthetic.styles"),
    ({"styles": ["photo", ""]}, "data.synthetic.styles"),
    ({"pseudo_words": 0}, "data.synthetic.pseudo_words"),
    ({"prompt_classes": 0}, "data.synthetic.prompt_classes"),
    ({"contrastive_tau": 0.0}, "data.synthetic.contrastive_tau"),
    ({"prompt_steps": -1}, "data.synthetic.prompt_steps"),
])
def test_validate_names_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        S.validate_synth(replace(SynthConfig(), **change))


def test_defaults_are_valid_plain_and_leave_out_the_shift_domains():
    S.validate_synth(SynthConfig())
    for f in fields(SynthConfig):  # dependency-free: movable into config.py / from_dict
        assert f.type in ("str", "int", "float", "list[str]"), f.name
    assert "photo" in SynthConfig().styles
    assert not {"sketch", "painting", "noisy", "drawing"} & set(SynthConfig().styles)
