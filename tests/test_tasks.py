"""Inpainting, SDEdit and DiffEdit: SDE and ODE versions share everything but the solver, masks hold exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import sdedrag.tasks.diffedit as diffedit_module
import sdedrag.tasks.inpaint as inpaint_module
import sdedrag.tasks.sdedit as sdedit_module
from sdedrag.engine import decode
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG, NoiseSchedule
from sdedrag.errors import InputError
from sdedrag.models import GaussianMixture, load_model
from sdedrag.models.base import DiffusionModel
from sdedrag.tasks.common import image_to_latent, mask_to_latent, paste_inside
from sdedrag.settings import DiffEditParams, InpaintParams, MaskParams, SDEditParams
from sdedrag.tasks.diffedit import diffedit, diffedit_mask
from sdedrag.tasks.inpaint import inpaint, inpaint_latent
from sdedrag.tasks.sdedit import sdedit
from tests.conftest import smooth_image

FAST = dict(steps=8, guidance=3.0)


@pytest.fixture(scope="module")
def tiny_inpaint():
    return load_model("tiny-inpaint", "cpu", "float32")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return smooth_image(64, 64)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[12:36, 20:50] = True
    return mask


def record_decode(monkeypatch, module) -> list[dict]:
    """Replace ``module.decode`` by the real decode that also records its arguments."""
    calls: list[dict] = []

    def recording(model, x_t0, path, process, cond=None, **kwargs):
        calls.append(dict(x_t0=x_t0, path=path, process=process, cond=cond, **kwargs))
        return decode(model, x_t0, path, process, cond, **kwargs)

    monkeypatch.setattr(module, "decode", recording)
    return calls


def same_condition(a, b) -> bool:
    if a is None or b is None:
        return a is b
    extras = (a.extra is None and b.extra is None) or torch.equal(a.extra, b.extra)
    return torch.equal(a.cond, b.cond) and torch.equal(a.uncond, b.uncond) and extras


def assert_same_but_solver(sde: dict, ode: dict) -> None:
    assert (sde.pop("process"), ode.pop("process")) == ("sde", "ode")
    assert torch.equal(sde.pop("x_t0"), ode.pop("x_t0"))
    path_sde, path_ode = sde.pop("path"), ode.pop("path")
    assert torch.equal(path_sde.grid.timesteps, path_ode.grid.timesteps)
    assert all(torch.equal(p, q) for p, q in zip(path_sde.latents, path_ode.latents, strict=True))
    assert same_condition(sde.pop("cond"), ode.pop("cond"))
    mask_sde, mask_ode = sde.pop("mask", None), ode.pop("mask", None)
    assert (mask_sde is None and mask_ode is None) or torch.equal(mask_sde, mask_ode)
    sde.pop("generator"), ode.pop("generator")
    assert sde == ode  # order, guidance, progress


def outside_is_exact(result: Image.Image, original: Image.Image, mask: np.ndarray) -> bool:
    return np.array_equal(np.asarray(result)[~mask], np.asarray(original)[~mask])


@pytest.mark.parametrize("model_name", ["tiny", "tiny-inpaint"])
@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("order", [1, 2])
def test_inpainting_keeps_every_unmasked_pixel(tiny32, tiny_inpaint, image, mask, model_name, method, order):
    model = tiny32 if model_name == "tiny" else tiny_inpaint
    result = inpaint(model, image, mask, "a cat", InpaintParams(method=method, order=order, **FAST))
    assert outside_is_exact(result.image, image, mask)
    inside = np.abs(np.asarray(result.image, dtype=float) - np.asarray(image, dtype=float))[mask]
    assert inside.mean() > 5 and result.image.size == image.size


@pytest.mark.parametrize("model_name", ["tiny", "tiny-inpaint"])
def test_sde_and_ode_inpainting_share_everything_but_the_solver(monkeypatch, tiny32, tiny_inpaint, image, mask,
                                                                model_name):
    model = tiny32 if model_name == "tiny" else tiny_inpaint
    calls = record_decode(monkeypatch, inpaint_module)
    sde = inpaint(model, image, mask, "a cat", InpaintParams(method="sde", order=2, seed=5, **FAST))
    ode = inpaint(model, image, mask, "a cat", InpaintParams(method="ode", order=2, seed=5, **FAST))
    assert not torch.equal(sde.latent, ode.latent)
    assert_same_but_solver(*calls)


def test_plain_models_inpaint_by_the_mask_rule(monkeypatch, tiny32, image, mask):
    calls = record_decode(monkeypatch, inpaint_module)
    result = inpaint(tiny32, image, mask, params=InpaintParams(paste_back=False, **FAST))
    x0 = image_to_latent(tiny32, image)
    region = mask_to_latent(mask, (8, 8), tiny32)
    assert torch.equal(calls[0]["mask"], region) and calls[0]["cond"].extra is None
    outside = region.expand_as(x0) == 0
    assert torch.equal(result.latent[outside], x0[outside])
    assert not torch.allclose(result.latent[~outside], x0[~outside])
    start, recorded = calls[0]["x_t0"], calls[0]["path"].x_t0
    assert torch.equal(start[outside], recorded[outside]) and not torch.allclose(start[~outside], recorded[~outside])


def test_inpainting_unet_sees_the_mask_and_the_masked_image(monkeypatch, tiny_inpaint, image, mask):
    calls = record_decode(monkeypatch, inpaint_module)
    inpaint(tiny_inpaint, image, mask, params=InpaintParams(method="ode", **FAST))
    extra = calls[0]["cond"].extra
    assert calls[0]["mask"] is None and extra.shape == (1, 5, 8, 8)
    assert torch.equal(extra[:, :1], mask_to_latent(mask, (8, 8), tiny_inpaint))
    grey = np.where(mask[..., None], 127.5, np.asarray(image, dtype=np.float32))
    expected = tiny_inpaint.encode_image(torch.from_numpy(grey / 127.5 - 1.0).permute(2, 0, 1)[None].float())
    assert torch.allclose(extra[:, 1:], expected, atol=1e-5)
    assert not torch.allclose(extra[:, 1:], image_to_latent(tiny_inpaint, image), atol=1e-2)


def test_partial_start_keeps_the_noisy_input_inside_the_mask(monkeypatch, tiny32, image, mask):
    calls = record_decode(monkeypatch, inpaint_module)
    inpaint(tiny32, image, mask, params=InpaintParams(method="ode", t0=0.5, **FAST))
    assert torch.equal(calls[0]["x_t0"], calls[0]["path"].x_t0) and calls[0]["path"].grid.num_steps == 4


def test_mask_rule_inpainting_of_an_independent_block_forgets_the_start_with_the_sde_only():
    """One diagonal Gaussian: x_B is independent of x_A, so inpainting x_B should sample N(mu_B, s_B^2). The
    pure-noise start misses p_T's mean sqrt(a_T) mu_B: the SDE forgets that error, the ODE carries it to t = 0."""
    gmm = GaussianMixture([1.0], [[3.0, -3.0]], [[0.5, 0.7]])
    x0 = torch.tensor([[3.0, 5.0]], dtype=torch.float64).expand(4000, 2)  # x_B = 5 is to be forgotten
    mask = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    mean_error = {}
    for method in ("sde", "ode"):
        params = InpaintParams(method=method, steps=50, guidance=1.0)
        out = inpaint_latent(gmm, x0, mask, params, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[:, 0], x0[:, 0])
        assert out[:, 1].std().item() == pytest.approx(0.7, abs=0.07), method
        mean_error[method] = abs(out[:, 1].mean().item() + 3.0)
    assert mean_error["sde"] < 0.05 and mean_error["ode"] > 0.1


def test_paste_inside_feathers_inward_and_keeps_the_outside_exactly():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    white, black = Image.new("RGB", (40, 40), "white"), Image.new("RGB", (40, 40), "black")
    out = np.asarray(paste_inside(white, black, mask, feather=4))[..., 0]
    assert (out[~mask] == 0).all() and out[20, 20] == 255
    assert out[20, 10] == round(255 / 5) and out[20, 14] == 255  # depth 1 -> 1/5, depth 5 -> 1
    assert (np.asarray(paste_inside(white, black, mask, feather=0))[..., 0] == np.where(mask, 255, 0)).all()


@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("order", [1, 2])
def test_sdedit_runs_for_both_methods_and_orders(tiny32, image, method, order):
    result = sdedit(tiny32, image, "a watercolor", SDEditParams(method=method, t0=0.5, order=order, **FAST))
    assert result.image.size == image.size
    assert np.abs(np.asarray(result.image, dtype=float) - np.asarray(image, dtype=float)).mean() > 1


def test_sde_and_ode_sdedit_share_everything_but_the_solver(monkeypatch, tiny32, image):
    calls = record_decode(monkeypatch, sdedit_module)
    sde = sdedit(tiny32, image, "a watercolor", SDEditParams(method="sde", t0=0.6, seed=3, **FAST))
    ode = sdedit(tiny32, image, "a watercolor", SDEditParams(method="ode", t0=0.6, seed=3, **FAST))
    assert not torch.equal(sde.latent, ode.latent) and calls[0]["path"].grid.num_steps == 5
    assert_same_but_solver(*calls)


class PromptRampModel(DiffusionModel):
    """eps = x, plus guidance * (column index) for the prompt "edit": the prompts disagree more to the right."""

    name = "prompt-ramp"
    device, dtype = torch.device("cpu"), torch.float64

    def __init__(self):
        self.schedule = NoiseSchedule(SD_SCHEDULER_CONFIG)

    def condition(self, prompt):
        return torch.tensor([1.0 if prompt == "edit" else 0.0], dtype=torch.float64)

    def stack_conditions(self, parts):
        return torch.cat([cond.expand(batch) for cond, batch in parts])

    def predict_eps(self, x, t, cond=None, guidance=1.0, lora_scale=1.0):
        ramp = guidance * torch.arange(x.shape[-1], dtype=x.dtype)
        return x + cond.view(-1, 1, 1, 1) * ramp


@pytest.mark.parametrize("threshold, editable_columns", [(0.5, [6, 7]), (0.25, [3, 4, 5, 6, 7])])
def test_diffedit_mask_marks_where_the_prompts_disagree(threshold, editable_columns):
    """Differences 0..7 (times guidance): clamped at 3x their mean 3.5, scaled to [0, 1], thresholded."""
    model = PromptRampModel()
    x0 = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = MaskParams(threshold=threshold)
    region = diffedit_mask(model, x0, model.condition("keep"), model.condition("edit"), 50, 2.0, params)
    expected = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    expected[..., editable_columns] = 1.0
    assert torch.equal(region, expected)


def test_an_empty_diffedit_mask_is_refused():
    with pytest.raises(InputError, match="empty"):
        diffedit(PromptRampModel(), Image.new("RGB", (8, 6)), "keep", "edit",
                 DiffEditParams(steps=10, mask=MaskParams(threshold=0.99)))


@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("order", [1, 2])
def test_diffedit_keeps_pixels_outside_its_mask(tiny32, image, method, order):
    params = DiffEditParams(method=method, order=order, **FAST)
    result = diffedit(tiny32, image, "a bowl of fruits", "a bowl of pears", params)
    assert result.mask.shape == (64, 64) and 0 < result.mask.mean() < 1
    assert outside_is_exact(result.image, image, result.mask)


def test_sde_and_ode_diffedit_share_the_mask_and_differ_as_the_paper_says(monkeypatch, tiny32, image):
    calls = record_decode(monkeypatch, diffedit_module)
    params = DiffEditParams(order=2, seed=1, paste_back=False, **FAST)
    sde = diffedit(tiny32, image, "a cat", "a dog", params)
    ode = diffedit(tiny32, image, "a cat", "a dog", replace(params, method="ode"))
    assert torch.equal(sde.latent_mask, ode.latent_mask) and torch.equal(calls[0]["mask"], calls[1]["mask"])
    source, target = tiny32.condition("a cat"), tiny32.condition("a dog")
    assert calls[0]["process"] == "cycle-sde" and calls[0]["path"].process == "cycle-sde"
    assert calls[0]["cond"] is target and calls[0]["record_cond"] is source
    assert calls[1]["process"] == "ode" and calls[1]["path"].process == "ode" and calls[1]["cond"] is target
    assert {k: calls[0][k] for k in ("order", "guidance")} == {k: calls[1][k] for k in ("order", "guidance")}
    x0 = image_to_latent(tiny32, image)
    outside = sde.latent_mask.expand_as(x0) == 0
    for result in (sde, ode):  # the latent outside the mask comes back to x0 exactly
        assert torch.equal(result.latent[outside], x0[outside])
        assert not torch.allclose(result.latent[~outside], x0[~outside])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, im, mk: inpaint(m, im, np.zeros_like(mk)), "mask is empty"),
        (lambda m, im, mk: inpaint(m, im, mk[:32]), "mask is 64x32"),
        (lambda m, im, mk: InpaintParams(t0=1.5), "t0"),
        (lambda m, im, mk: InpaintParams(method="cycle"), "method"),
        (lambda m, im, mk: InpaintParams(feather=-1.0), "feather"),
        (lambda m, im, mk: SDEditParams(t0=0.0), "t0"),
        (lambda m, im, mk: SDEditParams(order=4), "order"),
        (lambda m, im, mk: DiffEditParams(guidance=0.5), "guidance"),
        (lambda m, im, mk: diffedit(m, im, "", "a dog"), "source prompt"),
        (lambda m, im, mk: diffedit(m, im, "a dog", "a dog"), "identical"),
        (lambda m, im, mk: MaskParams(strength=0.0), "strength"),
    ],
)
def test_bad_input_is_refused(tiny32, image, mask, call, message):
    with pytest.raises(InputError, match=message):
        call(tiny32, image, mask)


def test_inpainting_checkpoints_are_refused_where_a_plain_model_is_needed(tiny_inpaint, image):
    for call in (lambda: sdedit(tiny_inpaint, image), lambda: diffedit(tiny_inpaint, image, "a", "b")):
        with pytest.raises(InputError, match="inpainting checkpoint"):
            call()
