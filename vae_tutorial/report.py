"""The README's tables of measured numbers, generated from the JSON files under results/.

`python -m vae_tutorial report` prints them; `--write README.md` replaces each table between its
`<!-- report:NAME -->` and `<!-- /report:NAME -->` markers. A test checks that the README holds
exactly what this module generates, so no number there is typed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .bench import TRAIN_IMAGES
from .config import preset
from .model import build_model, count_parameters


def _load(path: Path) -> dict | list:
    return json.loads(Path(path).read_text())


def _n(x: float) -> str:
    """Thousands separators, no decimals (rates); one decimal below 10."""
    return f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


def _params(model: str) -> str:
    net = build_model(preset("cpu", kind=model).model)
    return f"{count_parameters(net) / 1e6:.1f} M"


RUNS = [  # folder under results/, model, label
    ("conv-cpu", "conv", "**ConvVAE**"),
    ("conv-cpu-fp32", "conv", "ConvVAE in fp32 (`--set amp=false`)"),
    ("seed-cpu", "seed", "SeedVAE, the seed's network fixed, same time"),
]


def training_table(results: Path) -> str:
    """ConvVAE against the seed's network: training time and exact-test bits/dim."""
    lines = ["| model (`cpu` preset, same data, same likelihood) | parameters | epochs "
             "| training time | precision | test ELBO | test log-likelihood, IWAE |",
             "|---|---|---|---|---|---|---|"]
    for folder, model, label in RUNS:
        run = Path(results) / folder
        if not (run / "eval.json").exists():
            continue
        history, ev = _load(run / "history.json"), _load(run / "eval.json")
        minutes = sum(h["seconds"] for h in history) / 60
        precision = history[-1].get("precision", "fp32")
        epochs = f"{history[-1]['epoch']}{' (last partial)' if history[-1].get('partial') else ''}"
        iwae = f"{ev['iwae_bits_per_dim']:.3f} bits/dim (k={ev['num_samples']})"
        lines.append(f"| {label} | {_params(model)} | {epochs} "
                     f"| {minutes:.1f} min | {precision} | {ev['bits_per_dim']:.3f} bits/dim "
                     f"| {'**' + iwae + '**' if folder == 'conv-cpu' else iwae} |")
    return "\n".join(lines)


def bench_table(path: Path) -> str:
    """Training and IWAE rows of a `bench` JSON, with the machine and the command."""
    b = _load(path)
    lines = [f"`{b.get('command', 'python -m vae_tutorial bench')}` on {b['hardware']} "
             f"({b['device']}, {b['threads']} threads), torch {b['torch']}, data "
             f"`{b['data']}`, batch {b['batch_size']}, median of {b['repeats']} timed repeats "
             f"of {b['steps']} steps after warm-up, all rows in one run:", "",
             "| pipeline | training images/s | vs seed pipeline | s per 50k epoch |",
             "|---|---|---|---|"]
    train = [r for r in b["rows"] if r["unit"] == "train img/s"]
    for r in train:
        ratio = r.get("speedup_vs_seed", 1.0)
        lines.append(f"| {r['name']} | {_n(r['median'])} | {ratio:.2f}x "
                     f"| {TRAIN_IMAGES / r['median']:.0f} |")
    evals = [r for r in b["rows"] if r["unit"] == "eval img/s"]
    if evals:
        lines += ["", "| evaluation (fp32 log-weights) | images/s | 1,017 exact test images |",
                  "|---|---|---|"]
        for r in evals:
            s = r["seconds_for_1017_images"]
            lines.append(f"| {r['name']} | {_n(r['median'])} "
                         f"| {f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min'} |")
    return "\n".join(lines)


def loading_table(path: Path) -> str:
    """The input pipelines alone (`bench --loading-only`)."""
    b = _load(path)
    lines = [f"`{b.get('command', 'python -m vae_tutorial bench --loading-only')}` on "
             f"{b['hardware']}, batch {b['batch_size']}, median of {b['repeats']} epochs:", "",
             "| input pipeline, no model | images/s | vs seed |", "|---|---|---|"]
    for r in b["rows"]:
        lines.append(f"| {r['name']} | {_n(r['median'])} | {r.get('speedup_vs_seed', 1.0):.0f}x |")
    return "\n".join(lines)


def tables(results: Path = Path("results")) -> dict[str, str]:
    """Every generated table, by marker name."""
    results = Path(results)
    return {"training": training_table(results),
            "bench-cpu": bench_table(results / "bench-cpu.json"),
            "loading-cpu": loading_table(results / "bench-loading-cpu.json")}


def fill(text: str, generated: dict[str, str]) -> str:
    """text with every `<!-- report:NAME -->...<!-- /report:NAME -->` block regenerated."""
    for name, table in generated.items():
        pattern = re.compile(
            rf"(<!-- report:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /report:{re.escape(name)} -->)",
            re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- report:{name} --> ... <!-- /report:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text
