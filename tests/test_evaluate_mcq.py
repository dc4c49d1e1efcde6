"""Multiple-choice benchmarks: the reply parser, the three released layouts (WorldSense,
AV-SpeakerBench, AVHBench) over the hand-made questions in training/benchmarks/, the scores per
task and split, and ``python -m training.evaluate mcq`` end to end on the tiny model, in-process
and through the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT, Server
from training.evaluate.mcq import UNPARSED, parse_choice, prompt, report, score
from training.evaluate.mcq_layouts import LayoutError, expand, load

BENCH = ROOT / "training" / "benchmarks"
WORLDSENSE = BENCH / "worldsense" / "worldsense_qa.json"
SPEAKERBENCH = BENCH / "av_speakerbench" / "questions.json"
AVHBENCH = BENCH / "avhbench" / "json"
OPTIONS = ["A dog barking", "A cat", "A boat on a river", "Music"]
LETTERS = ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    "reply, label",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[D]", "D"),
        ("The answer is B", "B"),
        ("The correct answer is D: Music", "D"),
        ("Answer: (C)", "C"),
        ("**C. A boat on a river**", "C"),
        ("B) a cat, clearly", "B"),
        ("Based on the video, the correct answer is:\n\n**C. A boat**", "C"),
        ("I think it is D.", "D"),
        ("a boat on a river", "C"),  # the option's text
        ("It shows a dog barking loudly", "A"),
        ("music", "D"),
        ("A dog", UNPARSED),  # the article, and no option is just "a dog"
        ("The answer is a dog", UNPARSED),
        ("A or B", UNPARSED),  # two letters named
        ("a cat and music", UNPARSED),  # two options' texts
        ("hello world", UNPARSED),
        (", no no", UNPARSED),
        ("", UNPARSED),
        ("E", UNPARSED),  # not one of the labels
    ],
)
def test_replies_are_read_as_a_letter_or_unparsed(reply, label):
    assert parse_choice(reply, OPTIONS, LETTERS) == label


@pytest.mark.parametrize(
    "reply, label", [("Yes", "yes"), ("no.", "no"), ("No, it is not there.", "no"), ("I do not know", UNPARSED)]
)
def test_yes_no_replies(reply, label):
    assert parse_choice(reply, ["Yes", "No"], ["yes", "no"]) == label


def test_worldsense_layout():
    layout, items = load(WORLDSENSE)
    assert layout == "worldsense" and len(items) == 9
    first = next(i for i in items if i["id"] == "vllama_dog_barking-task0")
    assert first["options"] == ["A dog barking", "A car horn", "A piano melody", "Applause"]  # letters stripped
    assert first["labels"] == LETTERS and first["answer"] == "A" and first["task"] == "Audio Recognition"
    assert first["meta"]["task_domain"] == "Recognition" and first["window"] is None
    assert {i["video"] for i in items} >= {"vllama_boat", "vllama_birthday"}
    assert prompt(first) == (
        "What sound is heard in the video?\nA. A dog barking\nB. A car horn\nC. A piano melody\nD. Applause\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_av_speakerbench_layout_reads_the_choices_repr_and_the_window():
    layout, items = load(SPEAKERBENCH)
    assert layout == "av-speakerbench" and len(items) == 6
    first = items[0]
    assert first["id"] == "avsb-0001" and first["video"] == "vllama_dog_barking.mp4"
    assert first["options"][1] == "A dog" and first["answer"] == "B" and first["task"] == "Speaker Detection"
    assert first["window"] == [0.0, 7.0] and first["meta"]["category"] == "Speaker-centric"
    samples = expand(items, ["audio-visual", "audio-only", "visual-only"])
    assert len(samples) == 18 and len({s["id"] for s in samples}) == 18
    assert {s["split"]: s["modalities"] for s in samples} == {
        "audio-visual": ["audio", "video"],
        "audio-only": ["audio"],
        "visual-only": ["video"],
    }


def test_avhbench_layout_keeps_the_yes_no_tasks_and_leaves_captioning_out(capsys):
    layout, items = load(AVHBENCH)
    assert layout == "avhbench" and len(items) == 15  # 3 videos x 5 judgments; 3 captions left out
    assert "3 AV Captioning items left out" in capsys.readouterr().out
    assert {i["task"] for i in items} == {
        "Video-driven Audio Hallucination",
        "Audio-driven Video Hallucination",
        "AV Matching",
    }
    assert all(i["labels"] == ["yes", "no"] and i["answer"] in ("yes", "no") for i in items)
    one, _ = load(AVHBENCH / "vllama_boat.json")
    assert one == "avhbench"
    assert prompt(items[0]).endswith("\nAnswer with yes or no.")


def test_a_file_in_no_layout_says_which_keys_it_has(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps([{"video": "a", "q": "?"}]))
    with pytest.raises(LayoutError, match=r"keys \['q', 'video'\]"):
        load(bad)
    noanswer = tmp_path / "y.json"
    noanswer.write_text(json.dumps([{"video_id": "v", "question": "?", "choices": "['A. x', 'B. y']", "answer": "F"}]))
    with pytest.raises(LayoutError, match="answer 'F' is none of the options"):
        load(noanswer)


def _row(split, task, answer, reply, labels=LETTERS, bench="worldsense"):
    options = ["Yes", "No"] if labels == ["yes", "no"] else OPTIONS
    return dict(benchmark=bench, split=split, task=task, answer=answer, reply=reply, labels=labels, options=options)


def test_scores_per_task_and_split_count_unparsed_as_wrong(tmp_path):
    rows = [
        _row("audio-visual", "t1", "A", "A"),
        _row("audio-visual", "t1", "B", "The answer is B"),
        _row("audio-visual", "t2", "C", "gibberish"),
        _row("visual-only", "t1", "A", "D"),
        _row("audio-visual", "judge", "yes", "Yes.", ["yes", "no"], "avhbench"),
        _row("audio-visual", "judge", "no", "yes", ["yes", "no"], "avhbench"),
    ]
    s = score(rows)
    av = s["worldsense"]["audio-visual"]
    assert av["tasks"]["t1"] == {"n": 2, "correct": 2, "accuracy": 1.0, "chance": 0.25, "unparsed": 0}
    assert av["tasks"]["t2"]["accuracy"] == 0.0 and av["tasks"]["t2"]["unparsed"] == 1
    assert av["overall"]["n"] == 3 and abs(av["overall"]["accuracy"] - 2 / 3) < 1e-9
    assert s["worldsense"]["visual-only"]["overall"]["accuracy"] == 0.0
    judge = s["avhbench"]["audio-visual"]["overall"]
    assert judge["accuracy"] == 0.5 and judge["chance"] == 0.5 and judge["yes_rate"] == 1.0

    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = report(preds, tmp_path / "out").splitlines()
    assert "| worldsense | audio-visual | t1 | 2 | 100.0 | 25.0 | 0 | - |" in table
    assert "| worldsense | audio-visual | **overall** | 3 | 66.7 | 25.0 | 1 | - |" in table
    assert "| avhbench | audio-visual | judge | 2 | 50.0 | 50.0 | 0 | 100.0 |" in table
    assert json.loads((tmp_path / "out" / "report.json").read_text())["worldsense"]["visual-only"]["overall"]["n"] == 1
    assert (tmp_path / "out" / "report-worldsense.png").stat().st_size > 5000  # a chart per benchmark


def _mcq(*args):
    out = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "mcq", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_mcq_in_process_answers_every_split_and_resumes(tiny, tiny_home, tmp_path):
    args = ["--questions", str(SPEAKERBENCH), "--videos", str(ROOT / "tests" / "media"), "--checkpoint", "tiny"]
    first = _mcq(*args, "--max-tokens", "4", "--concurrency", "2", "--out", str(tmp_path))
    rows = _lines(tmp_path / "predictions.jsonl")
    assert len(rows) == 18 and "0 videos missing, 0 requests failed" in first.stdout
    per_split = {}
    for r in rows:
        per_split.setdefault(r["split"], []).append(r)
        assert r["parsed"] == parse_choice(r["reply"], r["options"], r["labels"])
        assert r["prompt"].startswith(r["question"]) and r["window"] is not None
    assert {k: len(v) for k, v in per_split.items()} == {"audio-visual": 6, "audio-only": 6, "visual-only": 6}
    assert {tuple(r["modalities"]) for r in per_split["audio-only"]} == {("audio",)}
    summary = json.loads((tmp_path / "report.json").read_text())["av-speakerbench"]
    assert {split: s["overall"]["n"] for split, s in summary.items()} == {
        "audio-visual": 6,
        "audio-only": 6,
        "visual-only": 6,
    }
    table = (tmp_path / "report.md").read_text()
    assert table.count("| **overall** | 6 |") == 3 and table in first.stdout
    assert (tmp_path / "report.png").stat().st_size > 5000
    again = _mcq(*args, "--out", str(tmp_path))  # nothing left to ask
    assert "18 of 18 samples answered" in again.stdout and "(18 were already there)" in again.stdout
    assert len(_lines(tmp_path / "predictions.jsonl")) == 18


@pytest.fixture(scope="module")
def server(tiny, tiny_home, tmp_path_factory):
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers"}, tmp_path_factory.mktemp("logs") / "mcq.log"
    )
    yield srv.wait_ready()
    srv.stop()


def test_mcq_through_the_service_for_worldsense_and_avhbench(server, tmp_path):
    media = str(ROOT / "tests" / "media")
    ws = _mcq(
        "--questions",
        str(WORLDSENSE),
        "--videos",
        media,
        "--base-url",
        server.url,
        "--max-tokens",
        "4",
        "--splits",
        "audio-visual,visual-only",
        "--out",
        str(tmp_path / "ws"),
    )
    rows = _lines(tmp_path / "ws" / "predictions.jsonl")
    assert len(rows) == 18 and "0 requests failed" in ws.stdout  # the birthday clip has no sound: still answered
    assert sorted({r["split"] for r in rows}) == ["audio-visual", "visual-only"]
    avh = _mcq(
        "--questions", str(AVHBENCH), "--videos", media, "--base-url", server.url, "--out", str(tmp_path / "avh")
    )
    rows = _lines(tmp_path / "avh" / "predictions.jsonl")
    assert len(rows) == 15 and all(r["parsed"] in ("yes", "no", UNPARSED) for r in rows)
    overall = json.loads((tmp_path / "avh" / "report.json").read_text())["avhbench"]["audio-visual"]["overall"]
    assert overall["n"] == 15 and "yes_rate" in overall and overall["chance"] == 0.5
    assert "| avhbench | audio-visual | **overall** | 15 |" in avh.stdout
    assert (tmp_path / "avh" / "report.png").stat().st_size > 5000
    sb = _mcq(
        "--questions", str(SPEAKERBENCH), "--videos", media, "--base-url", server.url, "--max-tokens", "4",
        "--splits", "audio-only", "--out", str(tmp_path / "sb"),
    )  # fmt: skip
    rows = _lines(tmp_path / "sb" / "predictions.jsonl")
    assert len(rows) == 6 and {r["split"] for r in rows} == {"audio-only"} and "0 requests failed" in sb.stdout, (
        sb.stdout
    )
