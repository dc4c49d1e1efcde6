"""Video-ChatGPT's judge metrics: the prompts, robust parsing of the judge's dict-string reply,
a reply cache (a rerun asks nothing twice), and the scoring run over predictions. Any
OpenAI-compatible endpoint can judge; every scored row records the judge model's id."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from .. import jsonl


class JudgeUnreachable(RuntimeError):
    """The judge endpoint cannot be reached (or keeps failing) after the client's retries."""


_ASPECTS = {
    "correctness": (
        "factual accuracy",
        "Judge whether the predicted answer is factually right about the video, using the correct "
        "answer as the reference. Contradictions or made-up details lower the score; a paraphrase "
        "with the same facts is fully correct.",
    ),
    "detail": (
        "detail orientation",
        "Judge how complete and specific the predicted answer is: does it cover everything the correct "
        "answer covers, with concrete detail rather than generalities?",
    ),
    "context": (
        "contextual understanding",
        "Judge whether the predicted answer fits the overall context of the video as the correct answer "
        "describes it, rather than answering something beside the point.",
    ),
    "temporal": (
        "temporal understanding",
        "Judge whether the predicted answer gets the order and timing of events right, as the correct "
        "answer gives them.",
    ),
    "consistency": (
        "consistency",
        "Two differently worded questions ask for the same information. Judge whether the two "
        "predicted answers agree with each other and with the correct answer.",
    ),
}


def judge_messages(metric: str, item: dict) -> list[dict]:
    """The judge prompt for one metric: system instructions for the aspect, then the question(s),
    the correct answer and the predicted answer(s); the reply is a Python dict string."""
    name, guidance = _ASPECTS[metric]
    system = (
        f"You evaluate answers that a video question-answering model gave, for {name}. {guidance} "
        "Score from 0 (worst) to 5 (best), integers only."
    )
    if metric == "consistency":
        body = (
            f"Question 1: {item['questions'][0]}\nQuestion 2: {item['questions'][1]}\n"
            f"Correct answer: {item['answer']}\n"
            f"Predicted answer to question 1: {item['predictions'][0]}\n"
            f"Predicted answer to question 2: {item['predictions'][1]}\n"
        )
    else:
        body = (
            f"Question: {item['questions'][0]}\nCorrect answer: {item['answer']}\n"
            f"Predicted answer: {item['predictions'][0]}\n"
        )
    user = (
        body + "\nReply with a Python dictionary string and nothing else, holding the key 'score' with an "
        "integer from 0 to 5, for example {'score': 3}."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def metrics_for(kind: str) -> list[str]:
    return {"generic": ["correctness", "detail", "context"], "temporal": ["temporal"], "consistency": ["consistency"]}[
        kind
    ]


_SCORE_RE = re.compile(r"""['"]?score['"]?\s*[:=]\s*['"]?(\d+(?:\.\d+)?)""", re.I)


def parse_score(text: str) -> float | None:
    """The score from a judge reply: a dict string (possibly in a code block or with prose
    around it), or failing that a lone 'score: N'. None when there is none in 0..5."""
    if not text:
        return None
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            try:
                value = json.loads(match.group(0))
            except json.JSONDecodeError:
                continue
        if isinstance(value, dict) and "score" in value:
            try:
                score = float(value["score"])
            except (TypeError, ValueError):
                continue
            return score if 0 <= score <= 5 else None
    m = _SCORE_RE.search(text)
    if m:
        score = float(m.group(1))
        return score if 0 <= score <= 5 else None
    return None


class JudgeCache:
    """Replies keyed by (model, prompt): a rerun asks the judge nothing it already answered."""

    def __init__(self, path: Path):
        self.path = path
        self.replies: dict[str, str] = {row["key"]: row["reply"] for row in jsonl.read(path)} if path.exists() else {}

    @staticmethod
    def key(model: str, messages: list[dict]) -> str:
        return hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str) -> None:
        self.replies[key] = reply
        jsonl.append(self.path, [{"key": key, "reply": reply}])


class Judge:
    """Any OpenAI-compatible chat-completions endpoint, through our SDK's client (retries with
    backoff on connection errors, 429 and 5xx, honouring Retry-After)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        cache: JudgeCache,
        max_retries: int = 5,
        parse_attempts: int = 3,
    ):
        from clients import Client

        self.client = Client(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=120)
        self.model, self.cache, self.parse_attempts = model, cache, parse_attempts
        self.calls = 0
        self._lock = threading.Lock()

    def score(self, messages: list[dict]) -> tuple[float | None, str]:
        key = JudgeCache.key(self.model, messages)
        cached = self.cache.get(key)
        if cached is not None and parse_score(cached) is not None:
            return parse_score(cached), cached
        from clients import APIConnectionError, InternalServerError

        reply = ""
        for attempt in range(self.parse_attempts):
            with self._lock:
                self.calls += 1
            try:
                r = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=64, seed=attempt
                )
            except (APIConnectionError, InternalServerError) as exc:
                raise JudgeUnreachable(f"the judge at {self.client.base_url} did not answer: {exc}") from None
            reply = r.choices[0].message.content or ""
            score = parse_score(reply)
            if score is not None:
                self.cache.put(key, reply)
                return score, reply
        return None, reply


def judge(predictions: Path, judge_: Judge, out: Path, concurrency: int) -> dict:
    """Scores every prediction for its kind's metrics; rows already scored are kept."""
    items = list(jsonl.read(predictions))
    done = {row["id"] for row in jsonl.read(out)} if out.exists() else set()
    jobs = [(item, m) for item in items for m in metrics_for(item["kind"]) if f"{item['id']}|{m}" not in done]
    unparsed = 0
    last_unparsed: list[str] = []

    def work(job):
        item, metric = job
        score, reply = judge_.score(judge_messages(metric, item))
        if score is None:  # not written: a rerun asks again
            last_unparsed[:] = [reply]
            return True
        jsonl.append(
            out,
            [
                {
                    "id": f"{item['id']}|{metric}",
                    "item": item["id"],
                    "metric": metric,
                    "score": score,
                    "judge_model": judge_.model,
                    "reply": reply,
                    "kind": item["kind"],
                    "questions": item["questions"],
                    "answer": item["answer"],
                    "predictions": item["predictions"],
                }
            ],
        )
        return False

    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(jobs), desc="judge", unit="call") as bar:
        futures = [pool.submit(work, j) for j in jobs]
        try:
            for future in as_completed(futures):
                unparsed += future.result()
                bar.update(1)
        finally:
            for f in futures:
                f.cancel()
    print(
        f"judge: {len(jobs) - unparsed} of {len(jobs)} scores written this run ({len(done)} already there), "
        f"{judge_.calls} judge calls, {unparsed} left unscored: replies with no score in them"
    )
    return {
        "scored": len(jobs) - unparsed,
        "calls": judge_.calls,
        "unparsed": unparsed,
        "last_unparsed": last_unparsed[0] if last_unparsed else None,
    }
