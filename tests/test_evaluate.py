"""Evaluation: the tiny service answers a small benchmark built from tests/media; the judge
is a local server speaking OpenAI chat completions that scores deterministically and sometimes
answers 429, malformed dicts or prose."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, Server
from training.evaluate.judge import judge_messages, parse_score
from training.evaluate.questions import load_questions

VIDEOS = ["vllama_dog_barking", "vllama_boat", "vllava_sample_demo_1"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, media_dir):
    d = tmp_path_factory.mktemp("bench")
    videos = d / "videos"
    videos.mkdir()
    for name in VIDEOS:
        (videos / f"{name}.mp4").symlink_to(media_dir / f"{name}.mp4")
    generic = [
        {"video_name": v, "Q": f"What happens in the video? ({i})", "A": f"Something happens {i}."}
        for i, v in enumerate(VIDEOS * 2)
    ] + [{"video_name": "v_notthere", "Q": "?", "A": "!"}]
    temporal = [{"video_name": v, "Q": "What happens first?", "A": "First a thing."} for v in VIDEOS]
    consistency = [
        {"video_name": v, "Q1": "What is shown?", "Q2": "Describe what is shown.", "A": "A scene."} for v in VIDEOS[:2]
    ]
    (d / "generic_qa.json").write_text(json.dumps(generic))
    (d / "temporal_qa.json").write_text(json.dumps(temporal))
    (d / "consistency_qa.json").write_text(json.dumps(consistency))
    (d / "av.jsonl").write_text(
        "\n".join(
            json.dumps({"video": str(videos / f"{v}.mp4"), "question": "What sound?", "answer": "A dog barks."})
            for v in VIDEOS[:1]
        )
        + "\n"
    )
    return d


@pytest.fixture(scope="module")
def server(tiny, tiny_home, tmp_path_factory):
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers"}, tmp_path_factory.mktemp("logs") / "eval.log"
    )
    yield srv.wait_ready()
    srv.stop()


class FakeJudge:
    """OpenAI chat completions. Per prompt: maybe a 429 first, then maybe a malformed dict or prose,
    then {'score': N} with N from the prompt's hash. ``stall_after`` makes call N hang."""

    def __init__(self, stall_after: int | None = None, always: str | None = None):
        self.always = always  # "prose": every reply without a score
        self.calls = 0
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stall_after = stall_after
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                assert self.path == "/v1/chat/completions"
                text = json.dumps(body["messages"])
                h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
                with owner.lock:  # the server answers on many threads
                    owner.calls += 1
                    n = owner.seen.get(text, 0)
                    owner.seen[text] = n + 1
                    call = owner.calls
                if owner.stall_after is not None and call > owner.stall_after:
                    time.sleep(30)
                plan = ["429"] * (h % 3 == 0) + ["malformed"] * (h % 5 == 0) + ["prose"] * (h % 7 == 0) + ["ok"]
                step = owner.always or plan[min(n, len(plan) - 1)]
                if step == "429":
                    data = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode()
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                else:
                    reply = {
                        "malformed": "{'score': }",
                        "prose": "The prediction is decent overall.",
                        "ok": f"{{'score': {h % 6}}}",
                    }[step]
                    data = json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 1,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply},
                                }
                            ],
                        }
                    ).encode()
                    self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _evaluate(*args, check=True, **kw):
    out = subprocess.run(
        [sys.executable, "-m", "training.evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JUDGE_API_KEY": "test"},
        **kw,
    )
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_question_files_in_each_format(bench):
    generic = load_questions(bench / "generic_qa.json")
    assert (
        len(generic) == 7
        and generic[0]["kind"] == "generic"
        and generic[0]["questions"] == ["What happens in the video? (0)"]
    )
    assert load_questions(bench / "temporal_qa.json")[0]["kind"] == "temporal"
    pair = load_questions(bench / "consistency_qa.json")[0]
    assert pair["kind"] == "consistency" and len(pair["questions"]) == 2
    assert load_questions(bench / "av.jsonl")[0]["answer"] == "A dog barks."
    shared = load_questions(ROOT / "training" / "benchmarks" / "vcgbench" / "consistency_qa.json")
    assert len(shared) == 499 and shared[0]["video"].startswith("v_")


def test_prompts_carry_question_reference_and_prediction():
    item = {"questions": ["What is shown?", "Describe it."], "answer": "A dog.", "predictions": ["a cat", "a dog"]}
    for metric in ("correctness", "detail", "context", "temporal"):
        system, user = judge_messages(metric, item)
        assert system["role"] == "system" and user["role"] == "user"
        for part in ("What is shown?", "A dog.", "a cat", "'score'"):
            assert part in user["content"], (metric, part)
    _, user = judge_messages("consistency", item)
    for part in ("Question 1: What is shown?", "Question 2: Describe it.", "question 1: a cat", "question 2: a dog"):
        assert part in user["content"]


@pytest.mark.parametrize(
    "reply, score",
    [
        ("{'score': 4}", 4),
        ('{"score": 5}', 5),
        ("```python\n{'score': 3}\n```", 3),
        ("Sure. {'score': 2, 'reason': 'partly right'}", 2),
        ("score: 1", 1),
        ("{'score': '0'}", 0),
        ("{'score': 9}", None),
        ("{'score': }", None),
        ("A fine answer.", None),
        ("", None),
    ],
)
def test_judge_replies_are_parsed_robustly(reply, score):
    assert parse_score(reply) == score


def test_predict_judge_resume_cache_and_report(server, bench, tmp_path):
    decodes_before = _metric(server, "avchat_decode_seconds_count")
    runs = {}
    for name, modalities in (("audio-visual", "audio,video"), ("vision-only", "video")):
        out = tmp_path / name
        for qfile in ("generic_qa.json", "temporal_qa.json", "consistency_qa.json"):
            _evaluate(
                "predict",
                "--questions",
                str(bench / qfile),
                "--videos",
                str(bench / "videos"),
                "--base-url",
                server.url,
                "--modalities",
                modalities,
                "--max-tokens",
                "6",
                "--concurrency",
                "2",
                "--out",
                str(out / qfile.replace(".json", ".jsonl")),
            )
        assert (
            "1 videos missing"
            in _evaluate(
                "predict",
                "--questions",
                str(bench / "generic_qa.json"),
                "--videos",
                str(bench / "videos"),
                "--base-url",
                server.url,
                "--out",
                str(out / "generic_qa.jsonl"),
            ).stdout
        )
        runs[name] = out
    preds = _lines(runs["audio-visual"] / "generic_qa.jsonl")
    assert len(preds) == 6 and all(len(p["predictions"]) == 1 for p in preds)
    assert len(_lines(runs["audio-visual"] / "consistency_qa.jsonl")[0]["predictions"]) == 2
    # One upload per video and file: 3 videos x 3 question files x 2 runs at most, not one per question.
    assert _metric(server, "avchat_decode_seconds_count") - decodes_before <= 18

    judge = FakeJudge()
    try:
        for out in runs.values():
            for stem in ("generic_qa", "temporal_qa", "consistency_qa"):
                _evaluate(
                    "judge",
                    "--predictions",
                    str(out / f"{stem}.jsonl"),
                    "--judge-base-url",
                    judge.url,
                    "--judge-model",
                    "fake-judge",
                    "--concurrency",
                    "3",
                    "--out",
                    str(out / f"{stem}.judged.jsonl"),
                )
        judged = _lines(runs["audio-visual"] / "generic_qa.judged.jsonl")
        assert len(judged) == 18 and {j["metric"] for j in judged} == {"correctness", "detail", "context"}
        assert all(0 <= j["score"] <= 5 for j in judged)
        for j in judged:  # deterministic scores: the fake judge's rule, through 429s, malformed dicts and prose
            messages = judge_messages(
                j["metric"], {"questions": j["questions"], "answer": j["answer"], "predictions": j["predictions"]}
            )
            assert j["score"] == int(hashlib.sha256(json.dumps(messages).encode()).hexdigest(), 16) % 6
        assert any(n > 1 for n in judge.seen.values())  # some prompts really needed retries
        # The cache: judging again from scratch asks the judge nothing.
        calls = judge.calls
        (runs["audio-visual"] / "generic_qa.judged.jsonl").unlink()
        again = _evaluate(
            "judge",
            "--predictions",
            str(runs["audio-visual"] / "generic_qa.jsonl"),
            "--judge-base-url",
            judge.url,
            "--judge-model",
            "fake-judge",
            "--out",
            str(runs["audio-visual"] / "generic_qa.judged.jsonl"),
        )
        assert judge.calls == calls and "0 judge calls" in again.stdout
        assert len(_lines(runs["audio-visual"] / "generic_qa.judged.jsonl")) == 18
    finally:
        judge.close()

    report = _evaluate(
        "report",
        "--run",
        f"vision-only={runs['vision-only']}",
        "--run",
        f"audio-visual={runs['audio-visual']}",
        "--out",
        str(tmp_path / "report"),
    )
    table = (tmp_path / "report" / "report.md").read_text()
    assert table.splitlines()[0] == (
        "| model | Correctness | Detail | Context | Temporal | Consistency | Average | questions | judge |"
    )
    assert "| vision-only |" in table and "| audio-visual |" in table and table in report.stdout
    assert all(line.endswith("| 11 | fake-judge |") for line in table.splitlines()[2:])  # 6 + 3 + 2 answered
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    means = summary["audio-visual"]["means"]
    assert (
        abs(
            means["average"]
            - sum(means[m] for m in ("correctness", "detail", "context", "temporal", "consistency")) / 5
        )
        < 1e-9
    )
    assert (tmp_path / "report" / "report.png").stat().st_size > 5000
    assert len(_lines(tmp_path / "report" / "samples.jsonl")) == 2 * (18 + 3 + 2)


def test_a_metric_not_judged_is_missing_not_zero(tmp_path):
    judged = tmp_path / "only_generic.judged.jsonl"
    judged.write_text(
        json.dumps({"id": "g-0|correctness", "item": "g-0", "metric": "correctness", "score": 4, "judge_model": "j"})
        + "\n"
    )
    _evaluate("report", "--run", f"partial={judged}", "--out", str(tmp_path / "report"))
    row = (tmp_path / "report" / "report.md").read_text().splitlines()[2]
    assert row == "| partial | 4.00 | 4.00 | 1 | j |"  # only correctness (and its average) were measured
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["partial"]
    assert "detail" not in summary["means"] and summary["answered"] == 1


def test_an_unreachable_judge_ends_with_a_message_not_a_traceback(bench, tmp_path):
    preds = tmp_path / "generic.jsonl"
    preds.write_text(json.dumps({**load_questions(bench / "generic_qa.json")[0], "predictions": ["x"]}) + "\n")
    out = _evaluate(
        "judge",
        "--predictions",
        str(preds),
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
        "--judge-model",
        "m",
        "--out",
        str(tmp_path / "j.jsonl"),
        check=False,
    )
    assert out.returncode == 3 and "did not answer" in out.stderr and "Traceback" not in out.stderr


def test_a_judge_that_never_gives_a_score_fails_loudly_and_writes_nothing(bench, tmp_path):
    preds = tmp_path / "generic.jsonl"
    preds.write_text(json.dumps({**load_questions(bench / "generic_qa.json")[0], "predictions": ["x"]}) + "\n")
    fake = FakeJudge(always="prose")
    try:
        out = _evaluate(
            "judge",
            "--predictions",
            str(preds),
            "--judge-base-url",
            fake.url,
            "--judge-model",
            "m",
            "--out",
            str(tmp_path / "j.jsonl"),
            check=False,
        )
    finally:
        fake.close()
    assert out.returncode == 4 and "held no score" in out.stderr and "decent overall" in out.stderr, out.stderr
    assert "0 of 3 scores written" in out.stdout and "Traceback" not in out.stderr
    assert not (tmp_path / "j.jsonl").exists() or not (tmp_path / "j.jsonl").read_text().strip()


def test_predict_fails_when_no_question_could_be_answered(bench, tmp_path):
    out = _evaluate(
        "predict",
        "--questions",
        str(bench / "generic_qa.json"),
        "--videos",
        str(tmp_path),
        "--base-url",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path / "p.jsonl"),
        check=False,
    )
    assert out.returncode == 1 and "no question could be answered" in out.stderr and "Traceback" not in out.stderr


def test_a_judge_run_killed_half_way_resumes(bench, tmp_path):
    preds = tmp_path / "generic.jsonl"
    preds.write_text(
        "\n".join(
            json.dumps({**q, "predictions": [f"answer {i}"]})
            for i, q in enumerate(load_questions(bench / "generic_qa.json"))
        )
        + "\n"
    )
    out = tmp_path / "generic.judged.jsonl"
    stalling = FakeJudge(stall_after=8)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "judge",
            "--predictions",
            str(preds),
            "--judge-base-url",
            stalling.url,
            "--judge-model",
            "j",
            "--concurrency",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and stalling.calls <= 8:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stalling.close()
    half = len(_lines(out))
    assert 0 < half < 21
    judge = FakeJudge()
    try:
        _evaluate(
            "judge", "--predictions", str(preds), "--judge-base-url", judge.url, "--judge-model", "j", "--out", str(out)
        )
    finally:
        judge.close()
    rows = _lines(out)
    assert len(rows) == 21 and len({r["id"] for r in rows}) == 21  # 7 items x 3 metrics, none twice
    assert judge.calls < 21 * 4  # only what was left (and its retries), not everything again


def _metric(server, name):
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))
