"""How often the keyword-free verdict (the reference answer's key terms) agrees with the hand-written keyword groups.

    python benchmarks/score_agreement.py --run-dir runs/demo [--out benchmarks/results/score_agreement_cpu.json]

Reads a finished run's evaluation.csv and retrieval.csv (answers of the base and the tuned model to questions that
carry keyword groups: the shipped held-out and general sets), scores every answer both ways, and reports, per
question set and model: answers, agreement, Cohen's kappa, each verdict's correct count, and the mean token F1 of
the answers each verdict calls right and wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cohen_kappa(a: list[bool], b: list[bool]) -> float:
    """Agreement beyond chance between two yes/no verdicts (1: always agree, 0: as chance would)."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def scored_text(row) -> str:
    """What the verdicts read: the answer, or the unfinished reasoning where the think block never closed."""
    text = row["reasoning"] if row.get("scored_on") == "unfinished reasoning" else row["answer"]
    return "" if text != text else str(text)  # a CSV's empty cell reads back as NaN


def agreement(run_dir: Path) -> dict:
    import pandas as pd

    from semifinetune.compare import question_sets
    from semifinetune.evaluate import keyword_hits
    from semifinetune.refscore import key_terms_correct, token_f1
    from semifinetune.runs import open_run

    cfg = open_run(run_dir)
    rows = {name: {row["input"]: row for row in questions} for name, questions in question_sets(cfg, run_dir=run_dir).items()}
    answers = [pd.read_csv(run_dir / "evaluation.csv").assign(set="held-out", retrieval="off")]
    if (run_dir / "retrieval.csv").exists():  # its held-out answers without notes are the evaluation's own
        more = pd.read_csv(run_dir / "retrieval.csv")
        answers.append(more[(more["set"] != "held-out") | (more["retrieval"] != "off")])
    table = pd.concat(answers, ignore_index=True)
    results = {}
    for (question_set, model, notes), group in table.groupby(["set", "model", "retrieval"]):
        by_keywords, by_terms, f1 = [], [], []
        for _, answer in group.iterrows():
            row = rows[question_set][answer["question"]]
            text = scored_text(answer)
            by_keywords.append(keyword_hits(text, row["keywords"]) == len(row["keywords"]))
            by_terms.append(key_terms_correct(text, row["key_terms"]))
            f1.append(token_f1(text, row["output"]))
        mean = lambda values: round(sum(values) / len(values), 3) if values else None  # noqa: E731
        results[f"{question_set}, {model}, notes {notes}"] = {
            "answers": len(by_keywords),
            "agreement": mean([x == y for x, y in zip(by_keywords, by_terms)]),
            "kappa": round(cohen_kappa(by_keywords, by_terms), 3),
            "correct_by_keywords": sum(by_keywords),
            "correct_by_key_terms": sum(by_terms),
            "token_f1_where_keywords_right": mean([f for f, ok in zip(f1, by_keywords) if ok]),
            "token_f1_where_keywords_wrong": mean([f for f, ok in zip(f1, by_keywords) if not ok]),
        }
    return {"run_dir": str(run_dir), "model": cfg.model_name, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = agreement(args.run_dir)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
