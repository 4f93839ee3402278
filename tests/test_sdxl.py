"""Stable Diffusion XL on ``tiny-xl``: time ids and pooled embeddings reach the UNet, exact Cycle-SDE
reconstruction, drag with a cached LoRA, every task and ``bench run`` through the CLI, the checkpoint
loader, and the VAE (float32 upcast, ``--vae`` replacement)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image

import sdedrag.lora as lora_module
from sdedrag.cli import main
from sdedrag.errors import InputError, ModelLoadError
from sdedrag.lora import LoraCache, LoraSettings, train_lora
from sdedrag.models import StableDiffusionXL, XLCondition, load_model
from sdedrag.models.tiny import build_tiny_vae, build_tiny_xl_pipeline
from sdedrag.session import DragSession
from sdedrag.settings import DragDiffusionParams, DragParams, ReconstructParams
from sdedrag.tasks.common import image_to_latent, paste_weights
from sdedrag.tasks.drag import DragRequest
from sdedrag.tasks.reconstruct import reconstruct
from tests.conftest import smooth_image
from tests.helpers import write_dataset

LORA = LoraSettings(steps=2, learning_rate=1e-2, batch_size=2)


@pytest.fixture(scope="module")
def xl64():
    return load_model("tiny-xl", "cpu", "float64")


@pytest.fixture(scope="module")
def xl32():
    return load_model("tiny-xl", "cpu", "float32")


def capture_unet_calls(model) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    """Record the keyword arguments of every UNet call (remove the returned handle afterwards)."""
    calls: list[dict] = []
    handle = model.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("size", [(80, 48), (64, 64)])
def test_time_ids_and_pooled_embeddings_of_the_image_reach_the_unet(xl32, size):
    calls, handle = capture_unet_calls(xl32)
    try:
        reconstruct(xl32, smooth_image(*size), "a cat", ReconstructParams(steps=4, t0=0.5, guidance=3.0))
    finally:
        handle.remove()
    width, height = size
    cond = xl32.condition("a cat")
    seen = torch.zeros(2, dtype=torch.bool)
    for kwargs in calls:
        added = kwargs["added_cond_kwargs"]
        assert added["time_ids"].tolist() == [[height, width, 0, 0, height, width]] * len(added["time_ids"])
        rows = torch.stack([(added["text_embeds"] == p).all(1) for p in (cond.pooled, cond.pooled_uncond)])
        assert rows.any(0).all()  # every latent sees the prompt's or the negative's pooled embedding
        seen |= rows.any(1)
    assert seen.all()  # both: the guided decode sees the negative


def test_time_ids_and_pooled_embeddings_change_the_prediction(xl64):
    x = torch.randn((1, 4, 6, 10), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cat, dog = xl64.condition("a cat"), xl64.condition("a dog")
    assert not torch.equal(cat.pooled, dog.pooled)
    eps = xl64.predict_eps(x, 500, cat)
    assert not torch.allclose(xl64.predict_eps(x, 500, replace(cat, pooled=dog.pooled)), eps)
    other_size = xl64.time_ids(1024, 1024)
    xl64._time_ids[48, 80] = other_size
    try:
        assert not torch.allclose(xl64.predict_eps(x, 500, cat), eps)
    finally:
        del xl64._time_ids[48, 80]
    assert torch.equal(xl64.predict_eps(x, 500, cat), eps)
    negative = XLCondition(cat.uncond, cat.uncond, cat.pooled_uncond, cat.pooled_uncond)
    eps_uncond = xl64.predict_eps(x, 500, negative)
    torch.testing.assert_close(xl64.predict_eps(x, 500, cat, 3.0), eps_uncond + 3.0 * (eps - eps_uncond))


def test_empty_negative_follows_the_pipeline_config(xl32):
    cond = xl32.condition("a cat")
    assert xl32.pipe.config.force_zeros_for_empty_prompt
    assert not cond.uncond.any() and not cond.pooled_uncond.any() and cond.pooled.abs().sum() > 0


def test_cycle_sde_reconstructs_sdxl_and_the_plain_sde_does_not(xl64):
    image = smooth_image(80, 48)
    params = dict(steps=20, t0=0.8, guidance=3.0, order=2)
    cycle = reconstruct(xl64, image, "a cat", ReconstructParams(process="cycle-sde", **params))
    plain = reconstruct(xl64, image, "a cat", ReconstructParams(process="sde", **params))
    assert cycle.latent_rel_error <= 1e-8
    assert plain.latent_rel_error > 0.1
    assert cycle.image.size == image.size


def test_lora_trains_on_the_time_ids_of_the_image(xl32):
    calls, handle = capture_unet_calls(xl32)
    try:
        state = train_lora(xl32, smooth_image(80, 48), "a cat", LORA, progress=False)
    finally:
        handle.remove()
    assert state and len(calls) == LORA.steps
    pooled = xl32.condition("a cat").pooled
    for kwargs in calls:
        added = kwargs["added_cond_kwargs"]
        assert added["time_ids"].tolist() == [[48, 80, 0, 0, 48, 80]] * LORA.batch_size
        assert torch.equal(added["text_embeds"], pooled.expand(LORA.batch_size, -1))


@pytest.fixture(scope="module")
def drag_request() -> DragRequest:
    mask = np.zeros((80, 128), bool)
    mask[16:64, 24:104] = True
    params = DragParams(steps=10, t0=0.6, radius=2, step_size=4.0)
    return DragRequest(smooth_image(128, 80), [(48, 40)], [(64, 44)], mask, "a photo", params)


def test_sde_and_ode_drag_train_the_lora_once_and_reuse_it(xl32, drag_request, tmp_path, monkeypatch):
    trainings = []
    monkeypatch.setattr(lora_module, "train_lora", lambda *a, **k: trainings.append(a) or train_lora(*a, **k))
    session = DragSession(xl32, lora_cache=LoraCache(tmp_path))
    outside = paste_weights(drag_request.mask) == 0
    results = {}
    for method in ("sde", "ode"):
        request = replace(drag_request, params=replace(drag_request.params, method=method))
        results[method] = result = session.drag(request, LORA)
        assert result.image.size == (128, 80) and result.moves >= 1 and not result.warnings
        assert np.array_equal(np.asarray(result.image)[outside], np.asarray(drag_request.image)[outside])
    assert len(trainings) == 1 and len(list(tmp_path.glob("*/pytorch_lora_weights.safetensors"))) == 1
    assert not np.array_equal(np.asarray(results["sde"].image), np.asarray(results["ode"].image))
    without = session.drag(drag_request, None)
    assert not torch.equal(without.latent, results["sde"].latent)  # the adapter changed the edit
    assert not xl32.has_lora


def test_dragdiffusion_runs_on_sdxl(xl32, drag_request):
    """DragDiffusion's decoder features, latent optimisation and [original, edited] decode work on the SDXL UNet."""
    weights = [p.detach().clone() for p in xl32.unet.parameters()]
    request = replace(drag_request, params=DragDiffusionParams(steps=10, iterations=3))
    result = DragSession(xl32).drag(request, None)
    outside = paste_weights(drag_request.mask) == 0
    assert result.image.size == (128, 80) and result.iterations >= 1
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(drag_request.image)[outside])
    assert not np.array_equal(np.asarray(result.image), np.asarray(drag_request.image))
    assert all(torch.equal(a, b) for a, b in zip(weights, xl32.unet.parameters()))


def test_the_ui_drags_on_sdxl_and_its_run_replays(xl32, tmp_path, monkeypatch):
    from sdedrag.ui import handlers

    session = DragSession(xl32, lora_cache=LoraCache(tmp_path / "lora"))
    assert "`tiny-xl`" in handlers.model_notice(xl32) and "random" in handlers.model_notice(xl32)
    options = {"prompt": "a photo", "method": "sde", "steps": 10.0, "t0": 0.6, "step_size": 4.0, "radius": 2.0,
               "alpha": 1.1, "beta": 0.3, "guidance": 3.0, "lora_scale_min": 0.5, "order": 1, "paste_back": True,
               "lora": False, "lora_steps": 2, "lora_rank": 4, "lora_lr": 1e-3, "seed": 0}
    final = list(handlers.run_drag(session, tmp_path / "runs", smooth_image(128, 80), None, [[48, 40], [64, 44]],
                                   options))[-1]
    folder = final.files[0].parent
    assert Image.open(folder / "result.png").size == (128, 80)
    monkeypatch.chdir(folder)
    assert main(["drag", "--config", "run.json", "--out", str(tmp_path / "replay")]) == 0
    assert (tmp_path / "replay" / "result.png").read_bytes() == (folder / "result.png").read_bytes()


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """A 64x48 input and a mask of its size."""
    smooth_image(64, 48).save(tmp_path / "input.png")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 16:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {name: str(tmp_path / f"{name}.png") for name in ("input", "mask")}


def test_drag_cli_with_lora_replays_from_its_config(tmp_path):
    smooth_image(128, 80).save(tmp_path / "input.png")
    mask = np.zeros((80, 128), np.uint8)
    mask[16:64, 24:104] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out, replay = tmp_path / "out", tmp_path / "replay"
    argv = [
        "drag", "--image", str(tmp_path / "input.png"), "--mask", str(tmp_path / "mask.png"), "--model", "tiny-xl",
        "--source", "48,40", "--target", "64,44", "--prompt", "a photo", "--steps", "10", "--radius", "2",
        "--lora-steps", "2", "--lora-lr", "0.01", "--lora-cache", str(tmp_path / "lora"), "--out", str(out),
    ]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["args"]["model"] == "tiny-xl" and record["args"]["lora"] is True
    assert len(list((tmp_path / "lora").glob("*/pytorch_lora_weights.safetensors"))) == 1
    result = Image.open(out / "result.png")
    outside = paste_weights(mask > 0) == 0
    assert result.size == (128, 80)
    original = np.asarray(Image.open(tmp_path / "input.png"))
    assert np.array_equal(np.asarray(result.convert("RGB"))[outside], original[outside])
    assert main(["drag", "--config", str(out / "run.json"), "--out", str(replay)]) == 0
    assert (replay / "result.png").read_bytes() == (out / "result.png").read_bytes()


@pytest.mark.parametrize("command", ["inpaint", "sdedit", "diffedit"])
def test_every_task_runs_on_tiny_xl(tmp_path, files, command):
    specific = {
        "inpaint": ["--mask", files["mask"], "--prompt", "a cat"],
        "sdedit": ["--prompt", "a watercolor", "--t0", "0.6"],
        "diffedit": ["--source-prompt", "a bowl of fruits", "--target-prompt", "a bowl of pears"],
    }[command]
    out = tmp_path / "out"
    argv = [command, "--image", files["input"], *specific, "--model", "tiny-xl", "--steps", "6", "--guidance", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["args"]["model"] == "tiny-xl"
    result, original = np.asarray(Image.open(out / "result.png")), np.asarray(Image.open(files["input"]))
    assert result.shape == original.shape
    if command == "sdedit":
        assert np.abs(result.astype(int) - original).mean() > 1
    else:
        mask = np.asarray(Image.open(files["mask"] if command == "inpaint" else out / "mask.png").convert("L")) > 0
        assert 0 < mask.mean() < 1 and np.array_equal(result[~mask], original[~mask])
        assert not np.array_equal(result[mask], original[mask])


def test_bench_run_on_tiny_xl(tmp_path):
    dataset = write_dataset(tmp_path / "data", "dragbench-d", count=1, size=(96, 72))
    out = tmp_path / "out"
    argv = ["bench", "run", "--dataset", str(dataset), "--model", "tiny-xl", "--no-lora", "--steps", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases_done"] == 1 and summary["args"]["model"] == "tiny-xl"
    (result,) = out.rglob("result.png")
    assert Image.open(result).size == (96, 72)


@pytest.mark.parametrize("inpainting", [False, True])
def test_saved_tiny_xl_loads_through_the_checkpoint_path(tmp_path, xl32, files, inpainting):
    folder = tmp_path / "tiny-xl"
    build_tiny_xl_pipeline(inpainting=inpainting).save_pretrained(folder)
    model = load_model(str(folder), "cpu", "float32")
    pipeline_class = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    assert isinstance(model, StableDiffusionXL) and type(model.pipe) is pipeline_class
    assert model.is_inpainting is inpainting and model.latent_scale == 8
    if not inpainting:
        x = torch.randn((1, 4, 6, 8), generator=torch.Generator().manual_seed(0))
        eps = [m.predict_eps(x, 400, m.condition("a cat"), 3.0) for m in (model, xl32)]
        assert torch.equal(*eps)
        return
    out = tmp_path / "out"
    argv = ["inpaint", "--image", files["input"], "--mask", files["mask"], "--model", str(folder), "--steps", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["results"]["inpainting_unet"] is True
    mask = np.asarray(Image.open(files["mask"]).convert("L")) > 0
    result, original = np.asarray(Image.open(out / "result.png")), np.asarray(Image.open(files["input"]))
    assert np.array_equal(result[~mask], original[~mask]) and not np.array_equal(result[mask], original[mask])


def test_float16_vae_runs_in_float32_unless_the_replacement_vae_says_otherwise(tmp_path):
    half = load_model("tiny-xl", "cpu", "float16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    assert image_to_latent(half, smooth_image(64, 48)).dtype == torch.float32
    build_tiny_vae(scaling_factor=0.13025, force_upcast=False).save_pretrained(tmp_path / "fixed-vae")
    fixed = load_model("tiny-xl", "cpu", "float16", vae=str(tmp_path / "fixed-vae"))
    assert fixed.vae.dtype == torch.float16 and fixed.pipe.vae is fixed.vae


@pytest.mark.parametrize("model_id", ["tiny", "tiny-xl"])
def test_vae_replaces_the_checkpoints_vae(tmp_path, model_id):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        vae = build_tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    model = load_model(model_id, "cpu", "float32", vae=str(tmp_path / "vae"))
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in model.vae.state_dict().items())
    image = torch.zeros(1, 3, 16, 16)
    assert not torch.equal(model.encode_image(image), load_model(model_id, "cpu").encode_image(image))


def test_vae_option_is_recorded_and_replayed(tmp_path, files):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        build_tiny_vae(scaling_factor=0.13025).save_pretrained(tmp_path / "vae")
    out = {name: tmp_path / name for name in ("plain", "replaced", "replay")}
    argv = ["reconstruct", "--image", files["input"], "--model", "tiny-xl", "--steps", "4", "--t0", "0.5"]
    assert main([*argv, "--out", str(out["plain"])]) == 0
    assert main([*argv, "--vae", str(tmp_path / "vae"), "--out", str(out["replaced"])]) == 0
    assert main(["reconstruct", "--config", str(out["replaced"] / "run.json"), "--out", str(out["replay"])]) == 0
    records = {name: json.loads((folder / "run.json").read_text()) for name, folder in out.items()}
    assert records["plain"]["args"]["vae"] is None and records["replay"]["args"]["vae"] == str(tmp_path / "vae")
    results = {name: (folder / "result.png").read_bytes() for name, folder in out.items()}
    assert results["replaced"] == results["replay"] != results["plain"]


def test_bad_vae_is_refused(tmp_path):
    build_tiny_vae(latent_channels=8).save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelLoadError, match="8 latent channels"):
        load_model("tiny-xl", "cpu", vae=str(tmp_path / "wide"))
    with pytest.raises(ModelLoadError, match="cannot load VAE"):
        load_model("tiny-xl", "cpu", vae=str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no VAE"):
        load_model("shapes", "cpu", vae=str(tmp_path / "wide"))
