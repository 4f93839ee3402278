"""shapes-sd: the shipped Stable Diffusion folder loads with stock diffusers and draws what its caption says;
captions, tokenizer and the adherence detector; a tiny resumable training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.models import SHAPES_SD_MODEL_DIR, StableDiffusion, load_model
from sdedrag.settings import ReconstructParams
from sdedrag.shapes.captions import WORDS, background_kind, build_tokenizer, caption, describe, named_shapes
from sdedrag.shapes.data import Shape, render, sample_background, sample_scene
from sdedrag.shapes.sd_checks import adherence
from sdedrag.shapes.sd_settings import SCHEDULER_CONFIG, SDTrainConfig
from sdedrag.shapes.train_sd import train
from sdedrag.tasks.reconstruct import reconstruct

RESOLUTION = 128


def test_stock_pipeline_loads_the_shipped_folder_and_draws_the_captions():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_SD_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    captions = [caption(sample_scene(np.random.default_rng([1, i]), RESOLUTION)) for i in range(8)]
    images = pipe(captions, height=RESOLUTION, width=RESOLUTION, num_inference_steps=20, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (8, RESOLUTION, RESOLUTION, 3)
    drawn = [adherence((image * 255).round().astype(np.uint8), text).colours for image, text in zip(images, captions)]
    assert np.mean(drawn) >= 0.5


def test_load_model_gives_an_sd_model_whose_cycle_sde_reconstruction_is_exact():
    model = load_model("shapes-sd", device="cpu")
    assert isinstance(model, StableDiffusion)
    assert model.latent_shape(RESOLUTION, RESOLUTION) == (4, RESOLUTION // 8, RESOLUTION // 8)
    scene = sample_scene(3, RESOLUTION)
    result = reconstruct(model, Image.fromarray(scene.image), caption(scene),
                         ReconstructParams(process="cycle-sde", steps=10, t0=0.6))
    assert result.latent_rel_error < 1e-4


def test_caption_names_shapes_left_to_right_and_the_background_kind():
    background = np.full((64, 64, 3), 200, dtype=np.uint8)
    shapes = [Shape("square", "blue", (50.0, 20.0), 6.0), Shape("disc", "red", (12.0, 40.0), 6.0),
              Shape("disc", "yellow", (30.0, 12.0), 5.0)]
    scene = render(background, shapes)
    assert caption(scene) == "a red disc, a yellow disc and a blue square on a plain background"
    assert describe(shapes[:1], "gradient") == "a blue square on a gradient background"
    assert named_shapes(caption(scene)) == [("red", "disc"), ("yellow", "disc"), ("blue", "square")]


def test_background_kind_tells_gradients_from_plain_backgrounds():
    kinds = {background_kind(sample_background(np.random.default_rng(seed), 64)) for seed in range(20)}
    assert kinds == {"plain", "gradient"}
    ramp = np.repeat(np.linspace(150, 200, 64).astype(np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    assert background_kind(ramp) == "gradient"


def test_tokenizer_holds_every_caption_word_as_one_token():
    tokenizer = build_tokenizer()
    for word in WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer.tokenize("a green square on a gradient background") == [
        f"{w}</w>" for w in "a green square on a gradient background".split()]


def test_adherence_detector_accepts_the_ground_truth_and_catches_missing_or_wrong_shapes():
    scene = sample_scene(np.random.default_rng([1, 5]), RESOLUTION)
    assert len(scene.shapes) >= 2
    assert adherence(scene.image, caption(scene)).exact
    assert not adherence(scene.without(0).image, caption(scene)).colours
    first = scene.shapes[0]
    swapped = scene.with_shapes([Shape("disc" if first.kind == "square" else "square", first.colour, first.centre,
                                       first.size), *scene.shapes[1:]])
    result = adherence(swapped.image, caption(scene))
    assert result.colours and not result.kinds
    assert adherence(scene.image, describe(scene.shapes[1:], "plain")).extras == 1


def test_tiny_training_run_writes_a_stock_pipeline_and_resumes(tmp_path):
    config = SDTrainConfig(resolution=32, pool=4, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=2, unet_batch=2,
                           unet_channels=(16, 32, 32), text_dim=16, warmup=1, checkpoint_every=1)
    results = train(config, tmp_path, progress=False)
    assert (results["vae_steps"], results["unet_steps"]) == (2, 2)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.vae.config.scaling_factor == pytest.approx(results["scaling_factor"])
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 16
    before = torch.load(tmp_path / "unet_checkpoint.pt", weights_only=False)
    resumed = train(SDTrainConfig(**{**config.__dict__, "unet_steps": 3}), tmp_path, progress=False)
    after = torch.load(tmp_path / "unet_checkpoint.pt", weights_only=False)
    assert resumed["unet_steps"] == 3 and resumed["lengths"] == [[0, 2], [2, 3]]
    assert after["losses"][:2] == before["losses"]
    with pytest.raises(ValueError, match="another training config"):
        train(SDTrainConfig(**{**config.__dict__, "unet_steps": 3, "unet_lr": 0.5}), tmp_path, progress=False)


def test_decoder_phase_sharpens_only_the_decoder_so_the_unet_latents_stay_valid(tmp_path):
    config = SDTrainConfig(resolution=32, pool=4, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=1, unet_batch=2,
                           unet_channels=(16, 32, 32), text_dim=16, warmup=1, checkpoint_every=1, decoder_batch=2)
    train(config, tmp_path, progress=False)
    before = StableDiffusionPipeline.from_pretrained(tmp_path).vae.state_dict()
    results = train(SDTrainConfig(**{**config.__dict__, "decoder_steps": 3}), tmp_path, progress=False)
    after = StableDiffusionPipeline.from_pretrained(tmp_path).vae.state_dict()
    assert results["decoder_steps"] == 3 and results["unet_steps"] == 1
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert (tmp_path / "decoder_loss_log.csv").is_file()


def test_scheduler_is_sds_with_v_prediction():
    ours = DDIMScheduler.from_config(SCHEDULER_CONFIG).config
    sds = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}).config
    public = [{k: v for k, v in config.items() if not k.startswith("_")} for config in (ours, sds)]
    assert public[0] == public[1]


def test_diffedit_track_recolours_the_case_shape_and_its_scoring_knows_the_truth():
    from sdedrag.shapes.bench import diffedit_prompts, make_drag_case, score_diffedit

    case = make_drag_case(0, 4, RESOLUTION)
    colour = case.edit_colour()
    assert colour == make_drag_case(0, 4, RESOLUTION).edit_colour()
    assert colour not in {s.colour for s in case.scene.shapes}
    source, target = diffedit_prompts(case)
    assert source != target and colour in target and colour not in source
    truth = score_diffedit(case, case.edited().image)
    assert truth["success"] and truth["region_psnr"] == truth["truth_psnr"] == 100.0
    unedited = score_diffedit(case, case.scene.image)
    assert not unedited["recoloured"] and not unedited["old_colour_gone"] and unedited["outside_max_diff"] == 0


def test_drag_patch_radius_covers_the_shape_in_latent_pixels():
    from sdedrag.shapes.bench import make_drag_case

    case = make_drag_case(0, 0, RESOLUTION)
    assert (case.radius(8) - 1) * 8 >= case.shape.radius > (case.radius(8) - 2) * 8


def test_shapes_bench_on_shapes_sd_runs_all_four_tracks_with_lora_and_captions(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import cli_env

    out, cache = tmp_path / "bench", tmp_path / "lora"
    command = [sys.executable, "-m", "sdedrag", "shapes-bench", "--model", "shapes-sd", "--device", "cpu",
               "--cases", "1", "--steps", "50", "--inpaint-regions", "shape", "--inpaint-steps", "5",
               "--corruptions", "noise", "--sdedit-t0", "0.3", "--sdedit-steps", "10", "--lora-cache", str(cache),
               "--out", str(out)]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert {"drag/sde", "drag/ode", "inpaint/shape/sde-5", "sdedit/noise/sde-t0.3", "diffedit/sde",
            "diffedit/ode"} <= set(summary["measures"])
    assert "diffedit/sde-vs-ode" in summary["sde_minus_ode"]
    settings = json.loads((out / "run.json").read_text())["results"]["settings"]
    assert settings["lora"]["rank"] == 4 and settings["drag"]["t0"] == 0.6 and settings["drag"]["steps"] == 50
    assert settings["guidance"] == 3.0 and not settings["drag"]["paste_back"]
    assert len(list(cache.rglob("*.safetensors"))) == 1  # one LoRA for the image, shared by SDE- and ODE-Drag
    case = next((out / "cases").iterdir())
    spec = json.loads((case / "case.json").read_text())
    assert spec["prompt"].startswith("a ") and spec["diffedit"]["colour"] in spec["diffedit"]["target_prompt"]


def test_diffedit_track_needs_a_text_conditional_model(tmp_path):
    import subprocess
    import sys

    from helpers import cli_env

    command = [sys.executable, "-m", "sdedrag", "shapes-bench", "--model", "shapes", "--tracks", "diffedit",
               "--cases", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "DiffEdit track edits by prompt" in done.stderr
    assert not (tmp_path / "out").exists()


def test_bench_eval_mean_distance_with_shapes_sd_features_on_shapesbench_cases(tmp_path):
    """DIFT features of shapes-sd find the dragged shape: Mean Distance is small for the ground truth and about
    the drag's length for the unedited input."""
    import csv
    import json
    import math
    import subprocess
    import sys

    from helpers import cli_env

    from sdedrag.shapes.bench import make_drag_case, write_case

    cases = [make_drag_case(0, index, RESOLUTION) for index in range(3)]
    for case in cases:
        folder = tmp_path / "cases" / case.case_id
        write_case(case, folder)
        (folder / "drag").mkdir()
        case.ground_truth().pil().save(folder / "drag" / "truth.png")
        case.scene.pil().save(folder / "drag" / "unedited.png")
    distances = {}
    for name in ("truth", "unedited"):
        out = tmp_path / f"eval-{name}"
        command = [sys.executable, "-m", "sdedrag", "bench", "eval", "--dataset", str(tmp_path / "cases"),
                   "--results", str(tmp_path / "cases"), "--result-file", f"drag/{name}.png", "--dift-model",
                   "shapes-sd", "--no-lpips", "--device", "cpu", "--out", str(out)]
        done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((out / "summary.json").read_text())["cases"] == 3
        with open(out / "metrics.csv") as handle:
            distances[name] = [float(row["mean_distance"]) for row in csv.DictReader(handle)]
    lengths = [math.dist(case.source, case.target) for case in cases]
    assert max(distances["truth"]) <= 5.0
    assert all(abs(d - length) <= 3.0 for d, length in zip(distances["unedited"], lengths))


def test_bench_eval_refuses_a_result_file_outside_the_case_folder(tmp_path):
    import subprocess
    import sys

    from helpers import cli_env

    command = [sys.executable, "-m", "sdedrag", "bench", "eval", "--dataset", str(tmp_path), "--results", str(tmp_path),
               "--result-file", "../x.png", "--out", str(tmp_path / "o")]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "relative path inside the case folder" in done.stderr


def test_demo_on_shapes_sd_drags_as_on_sd_and_scores_against_the_truth(tmp_path, capsys, monkeypatch):
    import json

    from sdedrag.cli import main

    monkeypatch.setenv("SDEDRAG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--model", "shapes-sd", "--device", "cpu", "--steps", "30", "--cases", "0",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "30 steps at t0 = 0.6, model shapes-sd" in captured.err.splitlines()[0]
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["sde", "ode"] and all(row["found"] for row in rows)
    assert "verdict: SDE-Drag" in captured.out
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1  # the per-image LoRA, trained once
    assert Image.open(out / "sde.gif").size == (256, 256)


def test_on_a_latent_model_the_drag_vector_is_whole_latent_pixels_so_the_truth_is_reachable():
    from sdedrag.shapes.bench import make_drag_case
    from sdedrag.tasks.drag import to_latent_points

    for index in range(10):
        case = make_drag_case(0, index, RESOLUTION, grid=8)
        vector = np.subtract(case.target, case.source)
        assert np.array_equal(vector % 8, [0, 0]) and np.hypot(*vector) >= 24
        latent = to_latent_points(np.array([case.source, case.target]), (RESOLUTION,) * 2, (16, 16))
        assert np.array_equal((latent[1] - latent[0]) * 8, vector)  # the latent move is the true move
    assert make_drag_case(0, 0, RESOLUTION).grid == 1  # pixel models keep their cases


def test_a_case_folder_remembers_its_grid(tmp_path):
    from sdedrag.shapes.bench import make_drag_case, read_case, write_case

    case = make_drag_case(0, 5, RESOLUTION, grid=8)
    write_case(case, tmp_path / "case")
    again = read_case(tmp_path / "case")
    assert again.grid == 8 and again.target == case.target


def test_the_runs_guidance_reaches_the_diffedit_track(tmp_path, monkeypatch):
    import sdedrag.shapes.bench as bench

    model = load_model("shapes-sd", device="cpu")
    seen = []

    def recording(model, image, source, target, params):
        seen.append(params)
        return type("Result", (), {"image": image})()

    monkeypatch.setattr(bench, "diffedit", recording)
    case = bench.make_drag_case(0, 0, RESOLUTION, grid=8)
    for guidance in (3.0, 5.0):
        settings = bench.settings_for(model, tracks=("diffedit",), guidance=guidance, seed=7)
        bench.run_case(model, case, settings, tmp_path / str(guidance))
    assert [(p.guidance, p.seed) for p in seen] == [(3.0, 7), (3.0, 7), (5.0, 7), (5.0, 7)]
