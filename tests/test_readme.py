"""README's examples, run as a newcomer would: against the service on the built-in model, with
`clip.mp4` a 2 s clip (shorter than every window the examples ask for)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.servers import ROOT, Server

README = (ROOT / "README.md").read_text()


def _blocks(language: str, needle: str) -> list[str]:
    return [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if needle in b]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    srv = Server({"AVCHAT_MODEL": "demo", "AVCHAT_ENGINE": "transformers"}, tmp_path_factory.mktemp("logs") / "r.log")
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture
def here(tmp_path):
    shutil.copy(ROOT / "model" / "demo" / "sample.mp4", tmp_path / "clip.mp4")
    return tmp_path


@pytest.mark.parametrize(
    "needle", ["import base64, openai", "from clients import Client", "from model import AVChatModel"]
)
def test_the_python_examples_run_on_any_clip(demo, here, needle):
    (code,) = _blocks("python", needle)
    code = code.replace("http://127.0.0.1:8000", demo.url)
    out = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_the_curl_examples_answer(demo, here):
    block = _blocks("bash", "# upload a video and ask (multipart)")[0]
    for command in re.findall(r"^curl .*?(?:\\\n.*?)*$", block, flags=re.M):
        if "vid-..." in command:
            continue  # needs an id from a previous answer
        command = command.replace("http://127.0.0.1:8000", demo.url).replace("curl ", "curl -fsS ", 1)
        out = subprocess.run(["bash", "-c", command], cwd=here, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and '"chat.completion"' in out.stdout, (command, out.stdout, out.stderr)
