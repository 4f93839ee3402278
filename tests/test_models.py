"""Model adapters: Gaussian-mixture exactness, v-prediction, save/load round trips, clear load errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.errors import ModelLoadError
from sdedrag.models import GaussianMixture, PixelUNet, StableDiffusion, load_model
from sdedrag.models.base import eps_from_output
from sdedrag.models.tiny import build_tiny_pipeline


def test_gaussian_mixture_eps_matches_finite_difference_score():
    gmm = GaussianMixture([0.3, 0.7], [[-2.0, 1.0, 0.0], [1.5, -0.5, 2.0]], [[0.5, 0.3, 1.0], [0.2, 0.8, 0.4]])
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for alpha in (0.999, 0.5, 0.05):
        h = 1e-5
        fd = torch.stack(
            [
                (gmm.log_prob(x + h * e, alpha) - gmm.log_prob(x - h * e, alpha)) / (2 * h)
                for e in torch.eye(3, dtype=torch.float64)
            ],
            dim=1,
        )
        assert torch.allclose(gmm.score(x, alpha), fd, atol=1e-6)
        assert torch.allclose(gmm.eps_at(x, alpha), -((1 - alpha) ** 0.5) * fd, atol=1e-6)


def test_gaussian_mixture_samples_have_the_marginal_moments():
    gmm = GaussianMixture([0.25, 0.75], [[-1.0], [2.0]], [0.5, 0.1])
    alpha = 0.3
    samples = gmm.sample(400_000, alpha, torch.Generator().manual_seed(0))
    mean = alpha**0.5 * (0.25 * -1.0 + 0.75 * 2.0)
    second = 0.25 * (alpha * 1.0 + alpha * 0.25 + 1 - alpha) + 0.75 * (alpha * 4.0 + alpha * 0.01 + 1 - alpha)
    assert samples.mean().item() == pytest.approx(mean, abs=5e-3)
    assert samples.pow(2).mean().item() == pytest.approx(second, abs=1e-2)


def test_gaussian_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError):
        GaussianMixture([1.0], [[0.0]], [0.0])


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_types_convert_to_the_same_eps(prediction_type):
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator)
    alpha = torch.tensor(0.37)
    x = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    output = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0 if prediction_type == "v_prediction" else x0
    assert torch.allclose(eps_from_output(output, x, alpha, prediction_type), eps, atol=1e-5)


def test_v_prediction_pipeline_is_read_from_the_scheduler_config():
    pipe = build_tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    model = StableDiffusion(pipe, "tiny-v")
    assert model.prediction_type == "v_prediction"
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    raw = pipe.unet(x, 500, encoder_hidden_states=model.condition("").cond).sample
    alpha = model.schedule.alphas_cumprod[500].float()
    assert torch.allclose(model.predict_eps(x, 500), alpha.sqrt() * raw + (1 - alpha).sqrt() * x, atol=1e-5)


def test_saved_tiny_pipeline_loads_through_the_checkpoint_path(tmp_path, tiny32):
    build_tiny_pipeline().save_pretrained(tmp_path / "tiny-sd")
    loaded = load_model(str(tmp_path / "tiny-sd"), "cpu", "float32")
    assert isinstance(loaded, StableDiffusion) and loaded.name == str(tmp_path / "tiny-sd")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = loaded.condition("a red ball")
    expected = tiny32.predict_eps(x, 321, tiny32.condition("a red ball"), guidance=2.5)
    assert torch.allclose(loaded.predict_eps(x, 321, cond, guidance=2.5), expected, atol=1e-6)


def test_pixel_unet_pipeline_loads_and_predicts(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(beta_schedule="linear", prediction_type="v_prediction", timestep_spacing="trailing")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "px")
    model = load_model(str(tmp_path / "px"), "cpu", "float64")
    assert isinstance(model, PixelUNet) and model.latent_scale == 1
    assert model.prediction_type == "v_prediction"  # read from scheduler/scheduler_config.json
    assert torch.allclose(model.schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert int(model.schedule.grid(10).timesteps[0]) == 999  # trailing spacing
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(model.decode_latent(model.encode_image(image)), image.double())
    eps = model.predict_eps(model.encode_image(image), 250)
    assert eps.shape == (1, 3, 16, 16) and eps.dtype == torch.float64


def test_unknown_model_offline_names_the_model_and_tiny_but_no_flag():
    with pytest.raises(ModelLoadError, match=r"cannot load model 'no-such-org/no-such-model'.*'tiny'") as err:
        load_model("no-such-org/no-such-model", "cpu")
    assert "--" not in str(err.value)  # the CLI names its flag (tests/test_cli.py)
