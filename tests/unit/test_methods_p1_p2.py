"""P1 complete and P2 label-free in the training loop: attribute sources, caption and
sentence-bank feeds, label-free training, P1's representation metrics, few-shot and
linear probe. Text embeddings come from a real (random-init, seeded) open_clip teacher;
training runs reuse the session's smoke world and teacher (tests/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from vldistill.trainers import loop
from vldistill.trainers.config import ConfigError, TextConfig, from_dict, load_train_config, to_dict
from vldistill.trainers.data.folder import DataError, DatasetInfo, UnlabelledImages
from vldistill.trainers.data.world import World, WorldSpec
from vldistill.trainers.evaluation import few_shot_accuracy, few_shot_split, linear_probe_accuracy
from vldistill.trainers.losses import WeightedLoss
from vldistill.trainers.metrics import (neighbour_overlap, relation_to_teacher,
                                        vl_alignment_inversions)
from vldistill.trainers.students import build_student
from vldistill.trainers.teachers import load_open_clip
from vldistill.trainers.text import (TEXT_SOURCES, build_text_targets, check_source,
                                     read_captions, register_source, sentence_bank)

# ----- attribute sources -----------------------------------------------------------------

ATTRS = {"red_circle": ["a round outline", "the colour of a ripe tomato."],
         "blue_square": ["four equal sides"], "green_star": ["five pointed tips"]}
TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]


@pytest.fixture(scope="module")
def teacher():
    return load_open_clip("vldistill-rn10t-tiny", None)  # seeded random init, no download


@pytest.fixture()
def info(tmp_path) -> DatasetInfo:
    (tmp_path / "attributes.json").write_text(json.dumps(ATTRS))
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (tmp_path / "vocabulary.txt").write_text("a photo of a shape.\n")
    return DatasetInfo(tmp_path, ["red_circle", "blue_square"], ["green_star"], {},
                       {"red_circle": "red circle"}, ["photo"], "photo")


# The prompts each shipped source must produce for class red_circle (base row 0).
EXPECTED_PROMPTS = {
    "classname": ["a photo of a red circle."],
    "templates": ["a photo of a red circle.", "a sketch of a red circle."],
    "descriptions": ["a photo of a red circle. a round outline.",
                     "a photo of a red circle. the colour of a ripe tomato."],
    "descriptors": ["red circle, which has a round outline",
                    "red circle, which has the colour of a ripe tomato"],
}


@pytest.mark.parametrize("source", sorted(TEXT_SOURCES))
def test_each_source_embeds_the_normalised_mean_of_its_prompts(source, teacher, info):
    assert source in EXPECTED_PROMPTS, f"new text source {source!r}: add its expected prompts"
    text = build_text_targets(teacher, info, TextConfig(source=source))
    per_prompt = F.normalize(teacher.encode_text(EXPECTED_PROMPTS[source]), dim=-1)
    expected = F.normalize(per_prompt.sum(0), dim=-1)
    assert torch.allclose(text.base[0], expected, atol=1e-5)
    assert text.base.shape == (2, teacher.embed_dim) and text.novel.shape == (1, teacher.embed_dim)
    assert torch.allclose(text.vocab[:2], text.base)  # vocabulary: base targets first
    assert text.vocab.shape[0] == 3


def test_classname_source_equals_the_former_single_template_path(teacher, info):
    text = build_text_targets(teacher, info, TextConfig())
    old = teacher.class_embeddings(["red circle", "blue square"], ["a photo of a {}."])
    assert torch.allclose(text.base, old, atol=1e-5)


def test_novel_targets_use_the_same_source(teacher, info):
    text = build_text_targets(teacher, info, TextConfig(source="descriptors"))
    expected = F.normalize(teacher.encode_text(["green star, which has five pointed tips"]), dim=-1)
    assert torch.allclose(text.novel[0], expected[0], atol=1e-5)


def test_attributes_name_the_world_files_or_a_path(teacher, info, tmp_path):
    partial = {c: [v[0]] for c, v in ATTRS.items()}
    (tmp_path / "attributes_partial.json").write_text(json.dumps(partial))
    (tmp_path / "mine.json").write_text(json.dumps({**ATTRS, "red_circle": ["a hole"]}))
    p = build_text_targets(teacher, info, TextConfig(source="descriptors", attributes="partial"))
    one = F.normalize(teacher.encode_text(["red circle, which has a round outline"]), dim=-1)[0]
    assert torch.allclose(p.base[0], one, atol=1e-5)
    m = build_text_targets(teacher, info, TextConfig(source="descriptors", attributes="mine.json"))
    hole = F.normalize(teacher.encode_text(["red circle, which has a hole"]), dim=-1)[0]
    assert torch.allclose(m.base[0], hole, atol=1e-5)
    assert len({p.key, m.key}) == 2


def test_unknown_source_is_a_config_error_listing_the_known(tmp_path, smoke_overrides):
    with pytest.raises(ConfigError, match=r"distill\.text\.source.*'nope'.*descriptors"):
        check_source("nope")
    cfg = load_train_config(smoke_overrides)
    bad = from_dict({**to_dict(cfg), "distill": {**to_dict(cfg)["distill"],
                                                 "text": {"source": "nope"}}})
    with pytest.raises(ConfigError, match="distill.text.source"):
        loop.check_registries(bad)


@pytest.mark.parametrize("case, attributes, match", [
    ("missing file", "noisy", r"distill\.text\.attributes='noisy'.*attributes_noisy\.json"),
    ("missing path", "nowhere.json", r"file not found: .*nowhere\.json"),
    ("malformed", "broken.json", r"broken\.json: not valid JSON"),
    ("class missing", "short.json", r"short\.json: no sentences for class 'blue_square'"),
    ("not a list", "str.json", r"str\.json: class 'red_circle' must map to a list"),
])
def test_attribute_file_errors_name_the_file_and_class(case, attributes, match, teacher, info, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "short.json").write_text(json.dumps({"red_circle": ["x"], "green_star": ["y"]}))
    (tmp_path / "str.json").write_text(json.dumps({**ATTRS, "red_circle": "one string"}))
    with pytest.raises(DataError, match=match):
        build_text_targets(teacher, info, TextConfig(source="descriptions", attributes=attributes))


def test_templates_file_errors(teacher, info, tmp_path):
    with pytest.raises(DataError, match=r"distill\.text\.templates_file: .*none\.txt"):
        build_text_targets(teacher, info, TextConfig(source="templates", templates_file="none.txt"))
    (tmp_path / "bad.txt").write_text("a photo of a thing.\n")
    with pytest.raises(DataError, match=r"bad\.txt: template 'a photo of a thing\.' has no"):
        build_text_targets(teacher, info, TextConfig(source="templates", templates_file="bad.txt"))


def test_a_new_source_is_one_registered_function(teacher, info):
    @register_source("shout_test")
    def shout(info, classes, cfg):
        return [[info.name(c).upper()] for c in classes]

    try:
        text = build_text_targets(teacher, info, TextConfig(source="shout_test"))
        assert torch.allclose(text.base[1], teacher.encode_text(["BLUE SQUARE"])[0], atol=1e-5)
        with pytest.raises(ValueError, match="already registered"):
            register_source("shout_test")(lambda i, c, g: [])
    finally:
        del TEXT_SOURCES["shout_test"]


# ----- sentence bank and captions -----------------------------------------------------------


def test_world_sentence_bank_is_deterministic_unpaired_and_leaves_the_world_key():
    w = World(WorldSpec())
    bank = w.sentence_bank(400, seed=0)
    assert len(bank) == 400 and bank == w.sentence_bank(400, seed=0)
    assert bank != w.sentence_bank(400, seed=1)
    text = " ".join(bank)
    for word in ("star", "magenta", "sketch", "striped"):  # semantic shape/colour, domains, patterns
        assert word in text
    assert WorldSpec().key() == "b795f704eb47207e"  # unchanged: cached teachers stay valid


def test_sentence_file_bank_subsamples_with_a_seed_and_errors_name_the_file(tmp_path):
    (tmp_path / "sentences.txt").write_text("\n".join(f"s{i}" for i in range(10)) + "\n")
    assert sentence_bank(tmp_path, None, 0, 0) == [f"s{i}" for i in range(10)]
    sub = sentence_bank(tmp_path, None, 4, 3)
    assert len(sub) == 4 and sub == sentence_bank(tmp_path, None, 4, 3)
    assert sub == sorted(sub, key=lambda s: int(s[1:]))  # file order kept
    with pytest.raises(DataError, match=r"distill\.vld\.sentences_file: .*other\.txt"):
        sentence_bank(tmp_path, "other.txt", 0, 0)


def test_missing_captions_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"captions\.json"):
        read_captions(tmp_path, [tmp_path / "photo" / "a" / "0.png"])
    (tmp_path / "captions.json").write_text(json.dumps({"photo/a/0.png": "a cat."}))
    assert read_captions(tmp_path, [tmp_path / "photo" / "a" / "0.png"]) == ["a cat."]
    with pytest.raises(DataError, match=r"no caption for training image 'photo/a/1\.png'"):
        read_captions(tmp_path, [tmp_path / "photo" / "a" / "1.png"])


# ----- the loop: what the losses receive ------------------------------------------------------


class Recorder(WeightedLoss):
    """The real composer, keeping a copy of every input it is given."""

    calls: list = []

    def forward(self, student, teacher, batch):
        Recorder.calls.append(({k: v.detach().clone() for k, v in teacher.items()},
                               {k: v.clone() for k, v in batch.items()}))
        return super().forward(student, teacher, batch)


@pytest.fixture()
def recorder(monkeypatch):
    Recorder.calls = []
    monkeypatch.setattr(loop, "WeightedLoss", Recorder)
    return Recorder


def _cfg(overrides, **eval_kw):
    cfg = load_train_config(overrides)
    return replace(cfg, eval=replace(cfg.eval, **eval_kw)) if eval_kw else cfg


def _batch_indices(cfg, n_train):
    """The batch order the loop documents: a pure function of (seed, epoch)."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 100_003))
    bs = cfg.optim.batch_size
    return [order[i * bs:(i + 1) * bs] for i in range(n_train // bs)]


def test_p1_full_feeds_each_images_own_caption_and_reports_final_metrics(smoke_overrides, recorder):
    cfg = _cfg([*smoke_overrides, "distill=p1_full", "optim.epochs=1", "student.name=resnet10t"],
               few_shot=1, linear_probe=True)
    m = loop.train(cfg, loop.LogReporter())
    splits, teacher, _, _ = loop.prepare(cfg)
    caps = json.loads((splits.info.root / "captions.json").read_text())
    batches = _batch_indices(cfg, len(splits.train))
    assert len(recorder.calls) == len(batches)
    for (t, b), idx in zip(recorder.calls, batches):
        rel = [splits.train_paths[i].relative_to(splits.info.root).as_posix() for i in idx]
        assert torch.allclose(t["caption_embed"], teacher.encode_text([caps[r] for r in rel]), atol=1e-5)
        assert torch.equal(b["label"], splits.train.labels[idx])
    assert m["cap_loss"] > 0
    for key in ("M_rel", "M_neigh", "M_rel/base", "M_neigh/novel", "linear_probe_acc",
                "novel_acc_1shot", "fewshot_novel_acc"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["M_vlalign"] <= 1.0 and m["M_vlalign"] == m["M_vlalign/novel"]


def test_label_free_training_never_gives_a_label_to_the_loss(smoke_overrides, recorder, monkeypatch):
    made = []

    class Spy(UnlabelledImages):
        @classmethod
        def of(cls, data):
            made.append(super().of(data))
            return made[-1]

    monkeypatch.setattr(loop, "UnlabelledImages", Spy)
    cfg = _cfg([*smoke_overrides, "distill=dime_fm", "distill.weights.udist=0.1",
                "distill.vld.bank_size=50", "optim.epochs=1", "student.name=resnet10t"])
    m = loop.train(cfg, loop.LogReporter())
    assert len(made) == 1 and not hasattr(made[0], "labels")
    assert set(vars(made[0])) == {"images"}
    assert recorder.calls and all(b == {} for _, b in recorder.calls)
    splits, teacher, _, _ = loop.prepare(cfg)
    bank = World(loop.world_spec(cfg)).sentence_bank(50, 0)
    for t, _ in recorder.calls:
        assert "caption_embed" not in t
        assert torch.allclose(t["sentence_embed"], teacher.encode_text(bank), atol=1e-5)
    for key in ("vld_loss", "pvld_loss", "udist_loss"):
        assert m[key] > 0, key
    assert "cls_loss" not in m and 0.0 <= m["novel_acc"] <= 1.0  # evaluation still measures


@pytest.mark.parametrize("override, loss", [("distill.weights.cls=1.0", "cls"),
                                            ("distill.weights.vlprox=1.0", "vlprox")])
def test_label_free_with_a_label_reading_loss_is_a_config_error(smoke_overrides, override, loss):
    cfg = load_train_config([*smoke_overrides, "distill=dime_fm"])
    bad = from_dict({**to_dict(cfg), "distill": {**to_dict(cfg)["distill"],
                                                 "weights": {"vld": 1.0, loss: 1.0}}})
    with pytest.raises(ConfigError, match=rf"distill\.labels=false.*'{loss}'"):
        loop.check_registries(bad)


def test_folder_dataset_without_captions_or_sentences_names_the_file(smoke_overrides, tmp_path):
    d = to_dict(load_train_config(smoke_overrides))
    d["data"].update(source="folder", root=str(tmp_path))
    d["distill"]["weights"] = {"cls": 1.0, "cap": 1.0}
    with pytest.raises(ConfigError, match=rf"distill\.weights\.cap.*{tmp_path / 'captions.json'}"):
        loop.check_registries(from_dict(d))
    d["distill"]["weights"] = {"vld": 1.0}
    with pytest.raises(ConfigError, match=rf"distill\.weights\.vld.*{tmp_path / 'sentences.txt'}"):
        loop.check_registries(from_dict(d))
    (tmp_path / "sentences.txt").write_text("a red star.\n")
    loop.check_registries(from_dict(d))


# ----- P1's representation metrics, hand-computed --------------------------------------------


def _angles(*deg):
    r = torch.deg2rad(torch.tensor(deg, dtype=torch.float64))
    return torch.stack([r.cos(), r.sin()], dim=1)


def test_m_rel_counts_images_whose_nearest_teacher_embedding_is_their_own():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # rows of s @ t.T: [1, 0, .6] -> 0 ok; [0, 1, .8] -> 1 ok; [1, 0, .6] -> 0, not 2
    assert relation_to_teacher(s, t) == pytest.approx(2 / 3)
    assert relation_to_teacher(t, t) == 1.0


def test_m_neigh_is_the_knn_overlap_over_k():
    t = _angles(0, 10, 90, 100)  # teacher 1-NN: 1, 0, 3, 2
    s = _angles(0, 10, 90, 175)  # student 1-NN: 1, 0, 1, 2
    assert neighbour_overlap(s, t, 1) == pytest.approx(3 / 4)
    # 2-NN teacher {1,2} {0,2} {1,3} {1,2}; student {1,2} {0,2} {1,3} {1,2}
    assert neighbour_overlap(s, t, 2) == pytest.approx(1.0)
    assert neighbour_overlap(s, t, 50) == pytest.approx(1.0)  # k capped at N - 1 = 3


def test_m_vlalign_is_the_fraction_of_reversed_teacher_pairs():
    text = torch.eye(4)
    t = torch.tensor([[0.9, 0.5, 0.7, 0.1]] * 3)  # teacher top-3 order: c0, c2, c1
    s = torch.tensor([[0.2, 0.8, 0.5, 0.9],  # c0 .2 < c2 .5 < c1 .8: 3 of 3 pairs reversed
                      [0.9, 0.1, 0.5, 0.0],  # .9 > .5 > .1: none
                      [0.7, 0.6, 0.5, 0.0]])  # .7, .5, .6: only (c2, c1) reversed
    assert vl_alignment_inversions(s, t, text, 3) == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert vl_alignment_inversions(s, t, text, 2) == pytest.approx((1 + 0 + 0) / 3)
    ties = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    assert vl_alignment_inversions(ties, t[:1], text, 3) == 0.0  # ties are not reversed


# ----- few-shot and linear probe -------------------------------------------------------------


def test_linear_probe_separates_separable_features_and_is_deterministic():
    x = torch.tensor([[1.0, 0.1], [0.9, -0.1], [0.1, 1.0], [-0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.8, 0.0]])
    # class 0: its 1 image right; class 1: [.2, 1] right, [.8, 0] called 0 -> (1 + 1/2) / 2
    acc = linear_probe_accuracy(x, y, test, torch.tensor([0, 1, 1]))
    assert acc == pytest.approx(0.75)
    assert linear_probe_accuracy(x, y, test, torch.tensor([0, 1, 1])) == acc
    assert linear_probe_accuracy(x, y, test[:2], torch.tensor([0, 1])) == 1.0


def test_few_shot_split_is_nested_seeded_and_refuses_too_few_images():
    labels = torch.tensor([0] * 4 + [1] * 3)
    s1, q1 = few_shot_split(labels, 1, seed=0)
    s2, q2 = few_shot_split(labels, 2, seed=0)
    assert len(s1) == 2 and len(s2) == 4 and set(s1.tolist()) <= set(s2.tolist())
    assert sorted(s1.tolist() + q1.tolist()) == list(range(7))
    assert torch.equal(few_shot_split(labels, 2, seed=0)[0], s2)
    with pytest.raises(ConfigError, match="eval.few_shot=3"):
        few_shot_split(labels, 3, seed=0)


def test_few_shot_accuracy_is_deterministic_and_depends_on_k(smoke_overrides):
    cfg = load_train_config([*smoke_overrides, "student.name=resnet10t"])
    splits, teacher, text, _ = loop.prepare(cfg)
    torch.manual_seed(0)
    student = build_student(cfg.student, teacher.embed_dim)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    acc = {k: few_shot_accuracy(student, splits.novel, text.novel, k, 5, 1e-3, 0, cfg.augment)
           for k in (1, 4)}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert acc[1] != acc[4]
    assert few_shot_accuracy(student, splits.novel, text.novel, 1, 5, 1e-3, 0, cfg.augment) == acc[1]
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # a copy is tuned


def test_text_targets_are_cached_by_teacher_and_prompts(teacher, info, tmp_path):
    from vldistill.trainers.config import TextConfig
    from vldistill.trainers.text import build_text_targets

    cfg = TextConfig(source="descriptors")
    first = build_text_targets(teacher, info, cfg, tmp_path)
    (entry,) = (tmp_path / "text").glob("*.pt")
    calls = []
    original = teacher.encode_text
    teacher.encode_text = lambda texts, *a, **k: (calls.append(len(texts)), original(texts, *a, **k))[1]
    try:
        again = build_text_targets(teacher, info, cfg, tmp_path)
        assert calls == []  # read from the cache: the text tower did not run
        other = build_text_targets(teacher, info, TextConfig(source="classname"), tmp_path)
        assert calls  # other prompts: another entry
    finally:
        del teacher.encode_text
    assert torch.equal(first.base, again.base) and torch.equal(first.novel, again.novel)
    assert first.key == again.key != other.key and len(list((tmp_path / "text").glob("*.pt"))) == 2
