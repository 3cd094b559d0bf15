"""Views are replayable from their seeds (the contract the teacher cache relies on)."""

import torch

from vldistill.trainers.config import AugmentConfig
from vldistill.trainers.data.views import make_views, view_seed


def test_same_seed_same_view_other_seed_other_view():
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    s = view_seed(torch.arange(4), 0)
    a, b = make_views(x, s, AugmentConfig()), make_views(x, s, AugmentConfig())
    assert torch.equal(a, b)
    c = make_views(x, view_seed(torch.arange(4), 1), AugmentConfig())
    assert not torch.allclose(a, c)
    # a view of image 2 does not depend on which batch it is in
    d = make_views(x[2:3], s[2:3], AugmentConfig())
    assert torch.allclose(d[0], a[2], atol=1e-6)


def test_identity_recipe_returns_the_image():
    x = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    v = make_views(x, view_seed(torch.arange(2), 0), AugmentConfig(scale_min=1.0, translate=0.0, flip=False))
    assert torch.allclose(v, x.float() / 255, atol=1e-5)
