"""The paper's comparisons as its code ran them (issue 12): inpainting's fixed-noise known region on the
DPM-Solver grid at order 3, DiffEdit's defaults and the ODE's negative prompt, ODE-Drag's inversion guidance,
and `sdedrag bench run`'s DragBench defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdedrag.cli import main
from sdedrag.engine import noised_trajectory
import sdedrag.tasks.diffedit as diffedit_task
from sdedrag.settings import DiffEditParams, DragParams, InpaintParams, MaskParams
from sdedrag.tasks.common import image_to_latent
from sdedrag.tasks.diffedit import NegativePrompt
from sdedrag.tasks.drag import DragRequest, drag
from sdedrag.tasks.inpaint import inpaint_latent
from tests.conftest import smooth_image
from tests.helpers import write_dataset
from tests.test_engine import RecordingModel

TABLE_2 = ["--known-region", "fixed-noise", "--spacing", "dpm-solver", "--order", "3", "--guidance", "7.5",
           "--no-paste-back"]


def latent_mask(x0: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(x0[:, :1])
    mask[..., 2:6, 3:8] = 1.0
    return mask


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_fixed_noise_known_region_follows_one_noise_sample_at_order_3(tiny64, method):
    """Outside the mask every model input is x0 noised with the run's first draw, which is also the start."""
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    mask = latent_mask(x0)
    params = InpaintParams(method=method, steps=20, order=3, guidance=1.0, known_region="fixed-noise", spacing="dpm-solver")
    model = RecordingModel(tiny64)
    model.schedule = tiny64.schedule
    out = inpaint_latent(model, x0, mask, params, generator=torch.Generator().manual_seed(7))
    noise = randn_tensor(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    expected = noised_trajectory(x0, tiny64.schedule.grid(20, spacing="dpm-solver"), noise).latents
    assert torch.equal(model.inputs[0], noise)
    outside = mask.expand_as(x0) == 0
    for seen, latent in zip([*model.inputs[1:], out], expected[1:]):
        assert torch.allclose(seen[outside], latent[outside], rtol=0, atol=1e-12)
    path = inpaint_latent(tiny64, x0, mask, InpaintParams(method=method, steps=20, order=3, guidance=1.0),
                          generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(path[~outside], out[~outside])


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_inpaint_cli_runs_the_table_2_setting(tmp_path, image_file, method):
    mask = np.zeros((72, 96), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / method
    assert main(["inpaint", "--image", str(image_file), "--mask", str(tmp_path / "mask.png"), "--model", "tiny",
                 "--method", method, "--steps", "20", *TABLE_2, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["args"]["known_region"] == "fixed-noise" and record["args"]["spacing"] == "dpm-solver"
    assert record["args"]["order"] == 3 and record["results"]["process"] == method
    assert Image.open(out / "result.png").size == (96, 72)


def test_negative_prompt_guides_away_from_the_source(tiny64):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    source, target = tiny64.condition("a bowl of fruits"), tiny64.condition("a bowl of pears")
    eps = NegativePrompt(tiny64, source).predict_eps(x, 500, target, guidance=7.5)
    eps_source, eps_target = (tiny64.predict_eps(x, 500, c) for c in (source, target))
    assert torch.allclose(eps, eps_source + 7.5 * (eps_target - eps_source), atol=1e-10)
    assert not torch.allclose(eps, tiny64.predict_eps(x, 500, target, guidance=7.5), atol=1e-6)


def test_diffedit_ode_decodes_with_the_source_prompt_as_negative(tiny32, monkeypatch):
    negatives = []

    class Recording(NegativePrompt):
        def predict_eps(self, x, t, cond=None, guidance=1.0, lora_scale=1.0):
            negatives.append(self.negative)
            return super().predict_eps(x, t, cond, guidance, lora_scale)

    monkeypatch.setattr(diffedit_task, "NegativePrompt", Recording)
    params = DiffEditParams(method="ode", steps=10, mask=MaskParams(threshold=0.2))
    diffedit_task.diffedit(tiny32, smooth_image(64, 64), "a bowl of fruits", "a bowl of pears", params)
    assert len(negatives) == 7 and all(n is tiny32.condition("a bowl of fruits") for n in negatives)


def test_diffedit_defaults_and_the_ode_negative_prompt_are_in_run_json(tmp_path, image_file):
    assert DiffEditParams().t0 == 0.7
    records = {}
    for method in ("sde", "ode"):
        out = tmp_path / method
        assert main(["diffedit", "--image", str(image_file), "--source-prompt", "a bowl of fruits", "--target-prompt",
                     "a bowl of pears", "--model", "tiny", "--method", method, "--steps", "10", "--mask-threshold", "0.2",
                     "--out", str(out)]) == 0
        records[method] = json.loads((out / "run.json").read_text())
    assert records["ode"]["args"]["t0"] == 0.7 and records["ode"]["args"]["guidance"] == 7.5
    assert records["ode"]["results"]["negative_prompt"] == "a bowl of fruits"
    assert records["sde"]["results"]["negative_prompt"] == ""


def test_ode_drag_inverts_with_guidance_one_by_default_and_can_mirror_the_ramp(tiny32):
    assert DragParams().inversion_guidance == 1.0
    image = smooth_image(64, 64)
    request = DragRequest(image, [(20.0, 20.0)], [(36.0, 28.0)], None, "a cat",
                          DragParams(method="ode", steps=20, paste_back=False))
    ramp = DragRequest(image, request.sources, request.targets, None, "a cat",
                       DragParams(method="ode", steps=20, paste_back=False, inversion_guidance="ramp"))
    one, mirrored = drag(tiny32, request).latent, drag(tiny32, ramp).latent
    assert not torch.allclose(one, mirrored)
    with pytest.raises(Exception, match="inversion guidance"):
        DragParams(inversion_guidance=0.5)


def test_bench_run_records_the_papers_dragbench_settings(tmp_path):
    dataset = write_dataset(tmp_path / "data", "dragbench-s", count=1, size=(64, 64))
    common = ["bench", "run", "--dataset", str(dataset), "--model", "tiny", "--steps", "4", "--lora-steps", "2"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--paste-back", "--lora-rank", "8", "--out", str(tmp_path / "options")]) == 0
    (default,) = (tmp_path / "default").glob("*/run.json")
    (options,) = (tmp_path / "options").glob("*/run.json")
    default, options = json.loads(default.read_text())["args"], json.loads(options.read_text())["args"]
    assert default["lora"] is True and default["lora_rank"] == 4 and default["lora_lr"] == 2e-4
    assert default["lora_steps"] == 2 and default["paste_back"] is False
    assert options["lora_rank"] == 8 and options["paste_back"] is True
