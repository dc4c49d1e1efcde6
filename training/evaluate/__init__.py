"""Video-ChatGPT's quantitative evaluation (five LLM-judged metrics) and the audio-visual
benchmark runner.

    # 1. answers, from a running service (one upload per video) or in-process from a checkpoint
    python -m training.evaluate predict --questions training/benchmarks/vcgbench/generic_qa.json --videos videos/ \\
        --base-url http://127.0.0.1:8000 --concurrency 4 --out runs/eval/av/generic.jsonl
    # 2. scores from any OpenAI-compatible judge (key from $JUDGE_API_KEY or $OPENAI_API_KEY)
    python -m training.evaluate judge --predictions runs/eval/av/generic.jsonl \\
        --judge-base-url https://api.openai.com/v1 --judge-model gpt-4o-mini --out runs/eval/av/generic.judged.jsonl
    # 3. a table like the paper's, several runs side by side, plus a bar chart
    python -m training.evaluate report --run vision-only=runs/eval/v --run audio-visual=runs/eval/av \\
        --out runs/eval/report

Question formats: Video-ChatGPT's JSON lists (``video_name, Q, A``; consistency: ``video_name,
Q1, Q2, A``), and the audio-visual benchmark's JSON lines (``video, question, answer``).
Metrics: correctness, detail, context (generic and audio-visual questions), temporal (temporal
questions), consistency (the paraphrased pairs, judged together). Every step resumes: a rerun
skips what is done, and judge replies are cached, so a rerun costs no judge calls.

Multiple-choice benchmarks in their released layouts (WorldSense, AV-SpeakerBench with its
audio-visual / audio-only / visual-only splits, AVHBench's yes/no judgments) need no judge:

    python -m training.evaluate mcq --questions training/benchmarks/av_speakerbench/questions.json \
        --videos videos/ --base-url http://127.0.0.1:8000 --out runs/mcq/av_speakerbench

The submodules: ``questions`` (the files), ``predict``, ``judge``, ``report``; ``mcq_layouts``
and ``mcq`` (the multiple-choice files, and their answers and scores); ``__main__`` is the
command line.
"""
