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


def test_scheduler_is_sds_with_v_prediction():
    ours = DDIMScheduler.from_config(SCHEDULER_CONFIG).config
    sds = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}).config
    public = [{k: v for k, v in config.items() if not k.startswith("_")} for config in (ours, sds)]
    assert public[0] == public[1]


def test_diffedit_case_recolours_one_shape_and_its_scoring_knows_the_truth():
    from sdedrag.shapes.sd_tracks import make_edit_case, score_edit

    case = make_edit_case(0, 4, RESOLUTION)
    again = make_edit_case(0, 4, RESOLUTION)
    assert (again.shape_index, again.colour) == (case.shape_index, case.colour)
    assert np.array_equal(again.scene.image, case.scene.image)
    source, target = case.prompts
    assert source != target and case.colour in target and case.colour not in source
    truth = score_edit(case, case.edited.image)
    assert truth.success and truth.region_psnr == truth.truth_psnr == 100.0
    unedited = score_edit(case, case.scene.image)
    assert not unedited.recoloured and not unedited.old_colour_gone and unedited.outside_max_diff == 0


def test_drag_patch_radius_covers_the_shape_in_latent_pixels():
    from sdedrag.shapes.bench import make_drag_case
    from sdedrag.shapes.sd_tracks import latent_radius

    case = make_drag_case(0, 0, RESOLUTION)
    assert (latent_radius(case, 8) - 1) * 8 >= case.shape.radius > (latent_radius(case, 8) - 2) * 8
