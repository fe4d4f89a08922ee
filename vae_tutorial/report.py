"""The tables of measured numbers in README.md and DATA.md, generated from results/.

`python -m vae_tutorial report` prints them; `--write FILE` replaces each table between its
`<!-- report:NAME -->` and `<!-- /report:NAME -->` markers (`write_all` does both files). A test
checks that both files hold exactly what this module generates, so no number there is typed by
hand.
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


MIX = "JPEG 50,000 + exact 5,085 x10"  # the ConvVAE and SeedVAE runs' training data (DATA.md)
RUNS = [  # folder under results/, model, label, training data
    ("conv-cpu", "conv", "**ConvVAE**", MIX),
    ("conv-cpu-fp32", "conv", "ConvVAE in fp32 (`--set amp=false`)", MIX),
    ("seed-cpu", "seed", "SeedVAE, the seed's network fixed, same time", MIX),
    ("hvae-cpu", "hvae", "**hierarchical VAE**", "exact 5,085, mirrored at random"),
    ("conv-cpu-epyc", "conv", "ConvVAE again, on the hierarchical VAE's machine", MIX),
    ("seed-cpu-epyc", "seed", "SeedVAE again, same time as that ConvVAE", MIX),
]
# The time-to-quality race: one machine for all three models (folder, label).
RACE = [("conv-cpu-epyc", "ConvVAE"), ("seed-cpu-epyc", "SeedVAE, same time as ConvVAE"),
        ("hvae-cpu", "hierarchical VAE")]
SHIFT_RUNS = [  # the data-mix runs of DATA.md: folder, training data
    ("conv-cpu-exact23pct", "JPEG 50,000 + exact 5,085 x3 (23% exact)"),
    ("conv-cpu-fp32", f"{MIX} (50% exact)"),
    ("conv-cpu", f"{MIX} (50% exact)"),
    ("hvae-cpu", "exact 5,085 only, mirrored at random"),
]


def _minutes(history: list[dict]) -> float:
    return sum(h["seconds"] for h in history) / 60


def training_table(results: Path) -> str:
    """Each model's `cpu` run: training time, hardware, and exact-test bits/dim."""
    lines = ["| model (`cpu` preset) | parameters | training data | epochs | training time "
             "| hardware, precision | test ELBO | test log-likelihood, IWAE |",
             "|---|---|---|---|---|---|---|---|"]
    for folder, model, label, data in RUNS:
        run = Path(results) / folder
        if not (run / "eval.json").exists():
            continue
        history, ev = _load(run / "history.json"), _load(run / "eval.json")
        precision = history[-1].get("precision", "fp32")
        epochs = f"{history[-1]['epoch']}{' (last partial)' if history[-1].get('partial') else ''}"
        iwae = f"{ev['iwae_bits_per_dim']:.3f} bits/dim (k={ev['num_samples']})"
        lines.append(f"| {label} | {_params(model)} | {data} | {epochs} "
                     f"| {_minutes(history):.1f} min | {ev['hardware']}, {precision} "
                     f"| {ev['bits_per_dim']:.3f} bits/dim "
                     f"| {'**' + iwae + '**' if label.startswith('**') else iwae} |")
    return "\n".join(lines)


def minutes_to_reach(history: list[dict], bpd: float) -> float | None:
    """Minutes of training until the end of the first epoch whose exact-test ELBO was at most
    `bpd` bits/dim, or None if no epoch got there."""
    spent = 0.0
    for h in history:
        spent += h["seconds"]
        if h.get("test_bpd", float("inf")) <= bpd:
            return spent / 60
    return None


def time_to_quality_table(results: Path, targets=(5.4, 5.0), race=RACE) -> str:
    """Minutes of training to reach each target (test ELBO on the exact images), for the runs
    of `race`, which must all have run on one machine."""
    head = " | ".join(f"to {t} bits/dim" for t in targets)
    lines = [f"| model (`cpu` preset) | {head} | best test ELBO (after) | hardware, precision |",
             "|---|" + "---|" * (len(targets) + 2)]
    machines = set()
    for folder, label in race:
        run = Path(results) / folder
        if not (run / "eval.json").exists():
            continue
        history, ev = _load(run / "history.json"), _load(run / "eval.json")
        machines.add(ev["hardware"])
        cells = []
        for t in targets:
            m = minutes_to_reach(history, t)
            cells.append(f"{m:.1f} min" if m is not None else "not reached")
        best = min(history, key=lambda h: h["test_bpd"])
        spent = minutes_to_reach(history, best["test_bpd"])
        lines.append(f"| {label} | {' | '.join(cells)} | {best['test_bpd']:.3f} "
                     f"({spent:.1f} min) | {ev['hardware']}, "
                     f"{history[-1].get('precision', 'fp32')} |")
    if len(machines) > 1:
        raise ValueError(f"the time-to-quality runs ran on {len(machines)} machines "
                         f"({'; '.join(sorted(machines))}): a race needs one")
    return "\n".join(lines)


def shift_table(results: Path) -> str:
    """Training against exact-test bits/dim after epoch 3 and at the end, per data mix."""
    lines = ["| run (`results/...`) | training data | epoch 3: train / exact test | "
             "last epoch: train / exact test |", "|---|---|---|---|"]
    for folder, data in SHIFT_RUNS:
        path = Path(results) / folder / "history.json"
        if not path.exists():
            continue
        history = _load(path)
        cells = []
        for h in (history[min(2, len(history) - 1)], history[-1]):
            cells.append(f"{h['train_bpd']:.2f} / {h['test_bpd']:.2f} "
                         f"(gap {h['test_bpd'] - h['train_bpd']:+.2f}, epoch {h['epoch']})")
        lines.append(f"| `{folder}` | {data} | {cells[0]} | {cells[1]} |")
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
            "time-to-quality": time_to_quality_table(results),
            "data-shift": shift_table(results),
            "bench-cpu": bench_table(results / "bench-cpu.json"),
            "loading-cpu": loading_table(results / "bench-loading-cpu.json")}


FILES = ("README.md", "DATA.md")  # the files whose markers hold generated tables


def markers(text: str) -> list[str]:
    """The names of the report blocks a text has."""
    return re.findall(r"<!-- report:([\w-]+) -->", text)


def write_all(checkout: Path, results: Path) -> list[Path]:
    """Regenerate the report blocks of README.md and DATA.md in place; returns the files."""
    generated = tables(results)
    written = []
    for name in FILES:
        path = Path(checkout) / name
        text = path.read_text()
        path.write_text(fill(text, {k: generated[k] for k in markers(text)}))
        written.append(path)
    return written


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
