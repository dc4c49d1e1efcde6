"""The real clips the benchmarks send (vendored in tests/media with their provenance)."""

from pathlib import Path

MEDIA = Path(__file__).resolve().parents[1] / "tests" / "media"
CLIPS = [
    "vllama_dog_barking.mp4",
    "vllama_boat.mp4",
    "vllava_sample_demo_1.mp4",
    "moviepy_chaplin.mp4",
    "vllama_birthday.mp4",
    "moviepy_big_buck_bunny_432_433.webm",
]
