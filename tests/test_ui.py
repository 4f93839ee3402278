"""The drag UI's handlers: points, mask extraction, upload checks, error messages, and a streamed run with tiny."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import sdedrag.lora
from sdedrag.cli import main
from sdedrag.errors import InputError
from sdedrag.lora import LoraCache
from sdedrag.models import load_model
from sdedrag.session import DragSession
from sdedrag.settings import DragParams
from sdedrag.shapes.settings import SHAPES_DRAG
from sdedrag.ui import handlers
from sdedrag.ui.app import build_app, shown_in_page
from sdedrag.visualize import SOURCE_COLOR, TARGET_COLOR
from tests.conftest import smooth_image

FAST = {
    "prompt": "a photo", "method": "sde", "steps": 10.0, "t0": 0.6, "step_size": 2.0, "radius": 5.0, "alpha": 1.1,
    "beta": 0.3, "guidance": 3.0, "lora_scale_min": 0.5, "order": 1, "paste_back": True, "lora": False,
    "lora_steps": 2, "lora_rank": 4, "lora_lr": 1e-3, "seed": 0,
}


@pytest.fixture
def session(tiny32, tmp_path):
    return DragSession(tiny32, lora_cache=LoraCache(tmp_path / "lora"))


def painted(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A transparent brush layer with an opaque-ish rectangle painted in ``box``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 90, 31, 140), box)
    return layer


def test_points_are_added_undone_and_cleared_in_image_pixels():
    size = (96, 64)  # shown enlarged: 640 px wide
    scale = handlers.view_scale(size)
    assert scale == pytest.approx(640 / 96)
    points = handlers.add_point([], (int(30.5 * scale), int(20.5 * scale)), size)
    points = handlers.add_point(points, (int(50.5 * scale), int(24.5 * scale)), size)
    assert points == [[30, 20], [50, 24]]
    assert handlers.add_point(points, (10_000, 5), size) == points  # outside the image
    assert handlers.add_point(points, (5, 5), None) == points  # nothing uploaded yet
    assert handlers.split_points(points + [[1, 2]]) == ([(30.0, 20.0), (1.0, 2.0)], [(50.0, 24.0)])
    assert handlers.undo_point(points) == [[30, 20]]
    assert handlers.undo_point([]) == []
    assert "click its target" in handlers.points_status([[30, 20]])
    assert handlers.points_status(points).startswith("1 pair(s)")
    assert handlers.view_scale((1200, 800)) == 1.0


def test_points_view_draws_arrows_dots_and_the_mask():
    image = Image.new("RGB", (96, 64), (128, 128, 128))
    mask = np.zeros((64, 96), bool)
    mask[:, :48] = True
    scale = handlers.view_scale(image.size)
    view = handlers.points_view(image, [[10, 10], [40, 30], [80, 50]], mask)
    assert view.size == (round(96 * scale), round(64 * scale))
    pixel = lambda x, y: view.getpixel((int((x + 0.5) * scale), int((y + 0.5) * scale)))
    assert pixel(10, 10) == SOURCE_COLOR and pixel(40, 30) == TARGET_COLOR
    assert pixel(80, 50) == SOURCE_COLOR  # the unpaired source is a dot
    assert pixel(20, 55) == (128, 128, 128) and max(pixel(70, 5)) < 128  # outside the mask is shaded
    assert handlers.points_view(None, [], None) is None
    big = Image.new("RGB", (1200, 800))
    assert handlers.points_view(big, [], None).size == big.size


def test_mask_comes_from_the_painted_layers():
    size = (96, 64)
    value = {"background": Image.new("RGBA", size), "layers": [painted(size, (10, 5, 30, 25))], "composite": None}
    mask = handlers.editor_mask(value, size)
    assert mask.shape == (64, 96) and mask.sum() == 20 * 20 and mask[5:25, 10:30].all()
    # a layer at another resolution (a canvas scaled by the browser) is resized to the image
    value["layers"] = [painted((192, 128), (0, 0, 96, 64))]
    assert handlers.editor_mask(value, size)[:32, :48].all() and handlers.editor_mask(value, size).sum() == 32 * 48
    assert handlers.editor_mask({"background": None, "layers": [Image.new("RGBA", size)]}, size) is None
    assert handlers.editor_mask(None, size) is None


def test_uploads_are_read_flattened_and_size_limited(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    rgba.save(tmp_path / "t.png")
    image = handlers.open_upload(tmp_path / "t.png", max_pixels=10_000)
    assert image.mode == "RGB" and image.getpixel((30, 10)) == (255, 255, 255) and image.getpixel((5, 5)) == (0, 0, 255)
    assert handlers.editor_value(image)["background"] is image
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo taken upright: stored sideways, turned by its EXIF orientation
    Image.new("RGB", (40, 30)).save(tmp_path / "phone.png", exif=exif)
    assert handlers.open_upload(tmp_path / "phone.png").size == (30, 40)

    with pytest.raises(InputError, match=r"40x30 \(0\.00 megapixels\).*--max-pixels.*downscale"):
        handlers.open_upload(tmp_path / "t.png", max_pixels=1000)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image this server can read"):
        handlers.open_upload(tmp_path / "notes.png")


@pytest.mark.parametrize(
    "image, points, options, message",
    [
        (None, [[1, 1], [5, 5]], {}, "upload an image first"),
        ("image", [], {}, "click a source point"),
        ("image", [[10, 10]], {}, "the last source point has no target"),
        ("image", [[10, 10], [20, 20], [30, 30]], {}, "got 2 sources and 1 targets"),
        ("image", [[10, 10], [200, 20]], {}, "outside the 96x64 image"),
        ("image", [[10, 10], [20, 20]], {"steps": None}, "steps is empty"),
        ("image", [[10, 10], [20, 20]], {"t0": 1.5}, "t0 must be in"),
        ("image", [[10, 10], [20, 20]], {"lora": True, "lora_rank": 0}, "LoRA rank must be"),
    ],
)
def test_bad_runs_are_refused_with_a_message(session, tmp_path, image, points, options, message):
    image = smooth_image(96, 64) if image else None
    with pytest.raises(InputError, match=message):
        next(handlers.run_drag(session, tmp_path, image, None, points, {**FAST, **options}))
    assert not list(tmp_path.glob("run-*"))


def test_errors_become_page_messages_without_tracebacks():
    with pytest.raises(gr.Error) as caught, shown_in_page():
        raise InputError("click a source point")
    assert caught.value.message == "click a source point"
    with pytest.raises(gr.Error) as caught, shown_in_page():
        raise RuntimeError("CUDA out of memory")
    assert "RuntimeError: CUDA out of memory" in caught.value.message and "server log" in caught.value.message


def test_run_streams_moves_and_writes_a_replayable_run(session, tmp_path, monkeypatch):
    image = smooth_image(96, 64)
    editor = {"background": image, "layers": [painted(image.size, (8, 8, 88, 56))], "composite": None}
    points = [[30, 30], [50, 34]]
    updates = list(handlers.run_drag(session, tmp_path / "runs", image, editor, points, FAST))

    assert updates[0].move == 0 and updates[0].image is image and not updates[0].files
    final = updates[-1]
    assert [u.move for u in updates[1:]] == list(range(1, final.moves + 1)) and final.moves >= 2
    assert final.image.size == image.size and final.message.startswith(f"Done: {final.moves} move(s) on 96x64")
    assert [f.name for f in final.files] == ["result.png", "trajectory.gif", "run.json", "input.png", "mask.png"]
    folder = final.files[0].parent
    assert folder.parent == tmp_path / "runs" and folder.name.startswith("run-")
    assert Image.open(folder / "result.png").size == image.size
    assert Image.open(folder / "trajectory.gif").n_frames == final.moves + 1
    record = json.loads((folder / "run.json").read_text())
    assert record["command"] == "drag"
    args = record["args"]
    assert (args["image"], args["mask"]) == ("input.png", "mask.png")
    assert (args["source"], args["target"]) == ([[30.0, 30.0]], [[50.0, 34.0]])
    assert (args["model"], args["device"], args["dtype"], args["steps"], args["radius"], args["lora"]) == (
        "tiny", "cpu", "float32", 10, 5, False)

    # `sdedrag drag --config run.json`, run beside the downloaded files, reproduces the result exactly
    monkeypatch.chdir(folder)
    assert main(["drag", "--config", "run.json", "--out", str(tmp_path / "replay")]) == 0
    assert (tmp_path / "replay" / "result.png").read_bytes() == (folder / "result.png").read_bytes()


def test_lora_is_trained_once_per_image(session, tmp_path, monkeypatch):
    trainings = []
    train = sdedrag.lora.train_lora
    monkeypatch.setattr(sdedrag.lora, "train_lora", lambda *a, **k: trainings.append(1) or train(*a, **k))
    image = smooth_image(64, 48, seed=1)
    options = {**FAST, "lora": True, "steps": 4}
    list(handlers.run_drag(session, tmp_path, image, None, [[10, 10], [20, 12]], options))
    final = list(handlers.run_drag(session, tmp_path, image, None, [[30, 30], [36, 30]], options))[-1]
    assert len(trainings) == 1 and len(list((tmp_path / "lora").iterdir())) == 1
    assert [f.name for f in final.files][-1] == "input.png"  # nothing painted: no mask
    assert json.loads(final.files[2].read_text())["args"]["lora_cache"] == str(tmp_path / "lora")


def test_app_serialises_runs_on_one_session(session, tmp_path):
    app = build_app(session, runs_dir=tmp_path)
    runs = [fn for fn in app.fns.values() if fn.name == "on_run"]
    assert len(runs) == 1 and runs[0].concurrency_limit == 1


def test_the_app_bounds_what_pil_decodes_brush_layers_included(session, tmp_path):
    previous = Image.MAX_IMAGE_PIXELS
    try:
        build_app(session, max_pixels=100, runs_dir=tmp_path)
        Image.new("RGBA", (20, 20)).save(tmp_path / "layer.png")  # 400 pixels: over twice the limit
        with pytest.raises(Image.DecompressionBombError), Image.open(tmp_path / "layer.png") as layer:
            layer.load()
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@pytest.fixture(scope="module")
def shapes_session(tmp_path_factory):
    return DragSession(load_model("shapes", "cpu"), lora_cache=LoraCache(tmp_path_factory.mktemp("lora")))


def test_the_page_names_the_model_and_warns_of_random_weights(session, shapes_session):
    tiny = handlers.model_notice(session.model)
    assert "`tiny`" in tiny and "random" in tiny and "noise by design" in tiny
    shapes = handlers.model_notice(shapes_session.model)
    assert "`shapes`" in shapes and "random" not in shapes and "New scene" in shapes
    params, _, lora = handlers.page_defaults(shapes_session.model)
    assert (params, lora) == (SHAPES_DRAG, False)  # ShapesBench's t0 and steps; no LoRA on a pixel model
    assert handlers.page_defaults(session.model)[0] == DragParams() and handlers.page_defaults(session.model)[2]


def test_cost_counts_the_unet_calls_a_run_makes(session, tmp_path, monkeypatch):
    calls = []
    predict = session.model.predict_eps
    monkeypatch.setattr(session.model, "predict_eps", lambda *a, **k: calls.append(1) or predict(*a, **k))
    image, points = smooth_image(96, 64), [[20, 30], [60, 34]]
    for method in ("sde", "ode"):
        options = {**FAST, "method": method, "t0": 0.5}
        cost = handlers.run_cost(session.model, image.size, points, options)
        calls.clear()
        moves = list(handlers.run_drag(session, tmp_path, image, None, points, options))[-1].moves
        assert f"{moves} move(s) x" in cost and f"= **{len(calls)} UNet calls**" in cost, (method, cost, len(calls))
    assert "click a point pair" in handlers.run_cost(session.model, None, [], FAST)
    assert "LoRA training steps" in handlers.run_cost(session.model, image.size, points, {**FAST, "lora": True})


def test_cost_names_the_full_unet_calls_under_feature_reuse(session, tmp_path):
    full = []
    hook = session.model.unet.mid_block.resnets[0].register_forward_hook(lambda *_: full.append(1))  # not on reuse
    image, points = smooth_image(96, 64), [[20, 30], [60, 34]]
    try:
        for method in ("sde", "ode"):
            options = {**FAST, "method": method, "reuse": 2}
            cost = handlers.run_cost(session.model, image.size, points, options)
            full.clear()
            moves = list(handlers.run_drag(session, tmp_path, image, None, points, options))[-1].moves
            per_move = int(cost.split("reuse every 2 calls, ")[1].split(" of each move")[0])
            assert per_move * moves == len(full), (method, cost, len(full))
    finally:
        hook.remove()


def test_masks_can_be_uploaded_and_join_the_brushed_area(tmp_path):
    image = smooth_image(96, 64)
    mask = np.zeros((64, 96), bool)
    mask[10:20, 10:30] = True
    Image.fromarray(mask).save(tmp_path / "mask.png")
    loaded = handlers.open_mask(tmp_path / "mask.png", image)
    assert np.array_equal(loaded, mask)
    value = handlers.editor_value(image, loaded)  # tinted into the background, nothing painted
    assert value["layers"] == [] and value["background"].getpixel((15, 15)) != image.getpixel((15, 15))
    assert value["background"].getpixel((50, 50)) == image.getpixel((50, 50))
    brushed = {"background": image, "layers": [painted(image.size, (50, 40, 60, 50))]}
    joined = handlers.page_mask(brushed, image.size, loaded)
    assert joined.sum() == mask.sum() + 100 and joined[45, 55] and joined[15, 15]
    assert np.array_equal(handlers.page_mask(None, image.size, loaded), mask)
    Image.new("L", (40, 30)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"^the uploaded mask is 40x30 but the image is 96x64") as caught:
        handlers.open_mask(tmp_path / "small.png", image)
    assert str(tmp_path) not in str(caught.value)
    with pytest.raises(InputError, match="upload an image first"):
        handlers.open_mask(tmp_path / "mask.png", None)


def test_a_scene_run_shows_the_ground_truth_and_compares_sde_with_ode(shapes_session):
    case = handlers.new_scene(shapes_session.model, 0)
    image = case.scene.pil()
    assert "move the red disc" in handlers.scene_task(case)
    view = handlers.points_view(image, [], case.editable, case.target)
    scale = handlers.view_scale(image.size)
    assert view.getpixel((int(case.target[0] * scale), int(case.target[1] * scale))) == (0, 0, 0)  # the cross
    points = [[int(case.source[0]), int(case.source[1])], [int(case.target[0]), int(case.target[1])]]
    options = {**FAST, "prompt": "", "steps": 20, "t0": 0.3, "order": 2, "guidance": 1.0, "paste_back": False,
               "radius": case.radius()}
    updates = list(handlers.compare_drags(shapes_session, image, None, points, options, case, case.editable))
    final = updates[-1]
    assert [u.move for u in updates] == sorted(u.move for u in updates) and final.move == final.moves
    assert [caption for _, caption in final.gallery] == ["input and drag", "SDE-Drag", "ODE-Drag", "ground truth"]
    truth = handlers.scene_truth(case, *handlers.split_points(points), case.editable)
    assert np.array_equal(np.asarray(final.gallery[-1][0]), truth.ground_truth().image)
    assert truth.target == pytest.approx((case.target[0] - case.target[0] % 1 + case.source[0] % 1,
                                          case.target[1] - case.target[1] % 1 + case.source[1] % 1))
    assert "| **SDE-Drag** |" in final.measures and "| **ODE-Drag** |" in final.measures
    # a click off every shape, or two pairs, has no ground truth
    assert handlers.scene_truth(case, [(0.0, 0.0)], [(5.0, 5.0)], None) is None
    assert handlers.scene_truth(case, [(1.0, 1.0)] * 2, [(2.0, 2.0)] * 2, None) is None


def test_on_shapes_sd_a_scene_is_prompted_with_its_caption_and_dragged_with_lora(tmp_path):
    from sdedrag.shapes.bench import scene_prompt
    from sdedrag.shapes.captions import caption
    from sdedrag.shapes.settings import SHAPES_SD_DRAG, SHAPES_SD_LORA

    session = DragSession(load_model("shapes-sd", device="cpu"), lora_cache=LoraCache(tmp_path / "lora"))
    model = session.model
    assert handlers.is_shapes_model(model) and "train-shapes-sd" in handlers.model_notice(model)
    assert handlers.page_defaults(model) == (SHAPES_SD_DRAG, SHAPES_SD_LORA, True)
    case = handlers.new_scene(model, 0)
    assert case.resolution == 128 and scene_prompt(model, case.scene) == caption(case.scene)
    points = [[int(case.source[0]), int(case.source[1])], [int(case.target[0]), int(case.target[1])]]
    options = {**FAST, "prompt": scene_prompt(model, case.scene), "steps": 50, "t0": 0.6, "lora": True,
               "lora_steps": 5, "paste_back": False, "radius": case.radius(model.latent_scale)}
    final = list(handlers.run_drag(session, tmp_path / "runs", case.scene.pil(), None, points, options, case,
                                   case.editable))[-1]
    assert [caption for _, caption in final.gallery] == ["input and drag", "SDE-Drag", "ground truth"]
    assert "| **SDE-Drag** |" in final.measures
    run = json.loads(next((tmp_path / "runs").glob("run-*/run.json")).read_text())
    assert run["args"]["prompt"] == caption(case.scene) and run["args"]["lora"] is True
    assert len(list((tmp_path / "lora").rglob("*.safetensors"))) == 1
