"""Tune the retraining recipe without the mesh: continue a trained model on 400 labels of a
new domain (plus the original training rows, as a retraining snapshot holds them) with
train.py exactly as a retraining job runs it, and score the result on that domain's large
held-out split and on the original test set, through inference.py's predict path.

    .venv/bin/python benchmarks/recipe_search.py --base MODEL_DIR --domains tweets editorials \
        --recipe '{"epochs": 3, "learning_rate": 5e-5, "replay_ratio": 2, "feedback_weight": 2}' ...

MODEL_DIR is a model trained by train.py on the amazon domain (the bootstrap's data and
preset). Each --recipe is a JSON object of train.py hyperparameters; runs are interleaved by
domain and seed so that the machine's noise spreads over all recipes alike.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentiloop.core.scripts import load_script, scripts_dir
from sentiloop.data import vader
from sentiloop.data.scoring import labelled, metrics, predict_labels


def write_snapshot(
    folder: Path, original: list[vader.Example], feedback: list[vader.Example]
) -> None:
    """The train channel as the retraining snapshot writes it: original rows, then feedback."""
    import csv

    folder.mkdir(parents=True)
    texts = {e.text for e in feedback}
    with (folder / "train.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "label", "source"])
        writer.writerows([e.text, e.label, "original"] for e in original if e.text not in texts)
        writer.writerows([e.text, e.label, "feedback"] for e in feedback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--domains", nargs="+", default=["tweets", "editorials"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13])
    parser.add_argument("--feedback", type=int, default=400)
    parser.add_argument("--recipe", action="append", required=True)
    args = parser.parse_args()
    recipes = [json.loads(r) for r in args.recipe]

    inference = load_script("inference")
    amazon = vader.split_examples(vader.load_domain("amazon"))
    amazon_test = labelled([(e.text, e.label) for e in amazon["test"]])

    def score(model_dir: Path, data: object) -> float:
        model = inference.model_fn(str(model_dir))
        return float(metrics(data.labels, predict_labels(model, data.texts))["macro_f1"])  # type: ignore[attr-defined]

    base_amazon = score(args.base, amazon_test)
    print(f"base model: amazon test macro-F1 {base_amazon:.4f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        validation = Path(tmp) / "validation"
        vader.write_csv(amazon["validation"], validation / "validation.csv")
        for domain in args.domains:
            split = vader.split_examples(vader.load_domain(domain))
            held_out = labelled([(e.text, e.label) for e in split["test"]])
            base_domain = score(args.base, held_out)
            print(f"{domain}: base macro-F1 {base_domain:.4f} on {len(held_out.texts)}", flush=True)
            for seed in args.seeds:
                for number, recipe in enumerate(recipes):
                    run = Path(tmp) / f"{domain}-{seed}-{number}"
                    # The seed picks the labels and seeds training, as in feedback_loop.py.
                    feedback = random.Random(seed).sample(split["train"], args.feedback)
                    write_snapshot(run / "train", amazon["train"], feedback)
                    hyperparameters = {"init_model_dir": str(args.base), "seed": seed, **recipe}
                    command = [
                        sys.executable, str(scripts_dir() / "train.py"),
                        "--train", str(run / "train"),
                        "--validation", str(validation),
                        "--model-dir", str(run / "model"),
                        "--output-data-dir", str(run / "out"),
                    ]  # fmt: skip
                    for name, value in hyperparameters.items():
                        command += [f"--{name}", str(value)]
                    started = time.monotonic()
                    subprocess.run(command, check=True, capture_output=True)
                    seconds = time.monotonic() - started
                    d = score(run / "model", held_out)
                    a = score(run / "model", amazon_test)
                    row = {
                        "domain": domain, "seed": seed, "recipe": number,
                        "d_domain": (d - base_domain) * 100, "d_amazon": (a - base_amazon) * 100,
                        "seconds": seconds,
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"  recipe {number} seed {seed:<3} {domain:<10} Δdomain {row['d_domain']:+6.1f}"
                        f"  Δamazon {row['d_amazon']:+5.1f}  {seconds:5.0f} s  {json.dumps(recipe)}",
                        flush=True,
                    )
    print()
    for number, recipe in enumerate(recipes):
        mine = [r for r in rows if r["recipe"] == number]
        worst_domain = min(r["d_domain"] for r in mine)
        worst_amazon = min(r["d_amazon"] for r in mine)
        seconds = sorted(r["seconds"] for r in mine)[len(mine) // 2]
        print(
            f"recipe {number}: worst Δdomain {worst_domain:+.1f}, worst Δamazon {worst_amazon:+.1f},"
            f" median {seconds:.0f} s  {json.dumps(recipe)}"
        )


if __name__ == "__main__":
    main()
