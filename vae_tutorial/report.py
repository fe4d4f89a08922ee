"""The tables of measured numbers in README.md and DATA.md, generated from results/.

`python -m vae_tutorial report` prints them; `--write FILE` replaces each table between its
`<!-- report:NAME -->` and `<!-- /report:NAME -->` markers (`write_all` does both files). A test
checks that both files hold exactly what this module generates, so no number there is typed by
hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from . import losses, runtime
from .analysis import paired_difference
from .bench import TRAIN_IMAGES
from .config import preset
from .histories import curve_split, records
from .histories import load_json as _load
from .histories import minutes as _minutes
from .model import build_model, count_parameters, count_used_parameters
from .reliability import stability_table, tutorial_table


def _n(x: float) -> str:
    """Thousands separators, no decimals (rates); one decimal below 10."""
    return f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


def _params(model: str) -> str:
    net = build_model(preset("cpu", kind=model).model)
    return f"{count_parameters(net) / 1e6:.1f} M"


# The hierarchical VAE's run of its `cpu` preset as chosen on validation (results/hvae-tried.md)
HVAE_CHOSEN = "hvae-try-batch16"
# ... and the release's final run of that preset, made once after the search and the faster step,
# evaluated once on the test images: the number notebooks 6 and 8 and the README report
HVAE_FINAL = "hvae-final"
MIX = "JPEG 50,000 + exact 5,085 x10"  # the ConvVAE and SeedVAE runs' training data (DATA.md)
# ... since the validation split: 500 exact images held out, and their JPEG twins removed
MIX_VALID = "JPEG 49,500 + exact 4,585 x10 (500 exact held out)"
BEFORE = "before the validation split"
RUNS = [  # folder under results/, model, label, training data
    ("conv-cpu-valid", "conv", "**ConvVAE**", MIX_VALID),
    ("seed-cpu-valid", "seed", "SeedVAE, the seed's network fixed, same time", MIX_VALID),
    (HVAE_FINAL, "hvae", "**hierarchical VAE**", "exact 4,585 (500 held out), mirrored at random"),
    (HVAE_CHOSEN, "hvae", "hierarchical VAE, the same recipe's run in its search (appendix A1)",
     "exact 4,585 (500 held out), mirrored at random"),
    ("hvae-cpu-valid", "hvae", "hierarchical VAE, its preset before the search (batch 64)",
     "exact 4,585 (500 held out), mirrored at random"),
    ("conv-cpu", "conv", f"ConvVAE, {BEFORE} (notebooks 5 to 7)", MIX),
    ("conv-cpu-fp32", "conv", f"ConvVAE in fp32 (`--set amp=false`), {BEFORE}", MIX),
    ("seed-cpu", "seed", f"SeedVAE, same time, {BEFORE}", MIX),
    ("hvae-cpu", "hvae", f"hierarchical VAE, {BEFORE}", "exact 5,085, mirrored at random"),
    ("conv-cpu-epyc", "conv", f"ConvVAE again on the second machine, {BEFORE}", MIX),
    ("seed-cpu-epyc", "seed", f"SeedVAE again, same time as that ConvVAE, {BEFORE}", MIX),
]
# The time-to-quality race: one machine for all three models (folder, label).
RACE = [("conv-cpu-valid", "ConvVAE"), ("seed-cpu-valid", "SeedVAE, same time as ConvVAE"),
        (HVAE_CHOSEN, "hierarchical VAE")]
SHIFT_RUNS = [  # the data-mix runs of DATA.md: folder, training data
    ("conv-cpu-exact23pct", "JPEG 50,000 + exact 5,085 x3 (23% exact)"),
    ("conv-cpu-fp32", f"{MIX} (50% exact)"),
    ("conv-cpu", f"{MIX} (50% exact)"),
    ("hvae-cpu", "exact 5,085 only, mirrored at random"),
]


GPU_MANIFEST = "gpu-check.json"  # what `gpu-check` writes in its folder (gpu_check.py)
MODEL_NAMES = {"conv": "ConvVAE", "seed": "SeedVAE", "hvae": "hierarchical VAE"}


def gpu_checks(results: Path) -> list[tuple[Path, dict]]:
    """(folder, its gpu-check.json) of every folder `gpu-check` wrote under results/."""
    return [(p.parent, _load(p)) for p in sorted(Path(results).glob(f"*/{GPU_MANIFEST}"))]


def _training_row(label: str, params: str, data: str, history: list[dict], ev: dict) -> str:
    precision = history[-1].get("precision", "fp32")
    epochs = f"{history[-1]['epoch']}{' (last partial)' if history[-1].get('partial') else ''}"
    images = ev.get("images", 0)
    cut = f", {images:,} images" if images < ev.get("requested_images", images) else ""
    iwae = f"{ev['iwae_bits_per_dim']:.3f} bits/dim (k={ev['num_samples']}{cut})"
    return (f"| {label} | {params} | {data} | {epochs} "
            f"| {_minutes(history):.1f} min | {ev['hardware']}, {precision} "
            f"| {ev['bits_per_dim']:.3f} bits/dim "
            f"| {'**' + iwae + '**' if label.startswith('**') else iwae} |")


def training_table(results: Path) -> str:
    """Each model's `cpu` run (and the runs of any `gpu-check`): training time, hardware, and
    exact-test bits/dim."""
    lines = []
    for folder, model, label, data in RUNS:
        run = Path(results) / folder
        if not (run / "eval.json").exists():
            continue
        history, ev = _load(run / "history.json"), _load(run / "eval.json")
        lines.append(_training_row(label, _params(model), data, history, ev))
    cpu_only = len(lines)
    for folder, check in gpu_checks(results):
        for r in check["runs"]:
            run = folder / r["folder"]
            if not (run / "eval.json").exists():
                continue
            label = (f"{MODEL_NAMES[r['model']]}, `{r['preset']}` preset, "
                     f"`gpu-check --minutes {check['budget_minutes']:g}`"
                     + (" (CPU dry run)" if check["dry_run"] else ""))
            lines.append(_training_row(label, f"{r['parameters'] / 1e6:.1f} M",
                                       r["training_data"], _load(run / "history.json"),
                                       _load(run / "eval.json")))
    head = "`cpu` preset" if len(lines) == cpu_only else "`cpu` preset unless named"
    return "\n".join([f"| model ({head}) | parameters | training data | epochs | training time "
                      "| hardware, precision | test ELBO | test log-likelihood, IWAE |",
                      "|---|---|---|---|---|---|---|---|", *lines])


def held_out_curve(history: list[dict]) -> list[float]:
    """The per-epoch held-out bits/dim of a run: validation where it had a validation split,
    else the exact test images (runs made before the split)."""
    key = f"{curve_split(history)}_bpd"
    return [h.get(key, float("inf")) for h in history]


def minutes_to_reach(history: list[dict], bpd: float) -> float | None:
    """Minutes of training until the end of the epoch from which the held-out ELBO (validation,
    else test) stayed at or below `bpd` bits/dim to the end of the run, or None: a dip below
    the target that the run gave back (during KL warm-up, say) does not count."""
    spent, reached = 0.0, None
    for h, value in zip(history, held_out_curve(history)):
        spent += h["seconds"]
        reached = (reached or spent) if value <= bpd else None
    return reached / 60 if reached is not None else None


def time_to_quality_table(results: Path, targets=(5.4, 5.0), race=RACE) -> str:
    """Minutes of training to reach each target (test ELBO on the exact images), for the runs
    of `race`, which must all have run on one machine."""
    head = " | ".join(f"to {t} bits/dim" for t in targets)
    lines = [f"| model (`cpu` preset) | {head} | best held-out ELBO (after) | held out "
             "| hardware, precision |", "|---|" + "---|" * (len(targets) + 3)]
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
        curve = held_out_curve(history)
        best = min(curve)
        spent = sum(h["seconds"] for h in history[:curve.index(best) + 1]) / 60
        held = (f"validation ({ev.get('valid_size', 500):,})" if curve_split(history) == "valid"
                else f"test ({ev.get('images', 1017):,})")
        lines.append(f"| {label} | {' | '.join(cells)} | {best:.3f} "
                     f"({spent:.1f} min) | {held} | {ev['hardware']}, "
                     f"{history[-1].get('precision', 'fp32')} |")
    if len(machines) > 1:
        raise ValueError(f"the time-to-quality runs ran on {len(machines)} machines "
                         f"({'; '.join(sorted(machines))}): a race needs one")
    return "\n".join(lines)


def _ordered(runs: dict[str, dict], key) -> list[tuple[str, dict]]:
    """(folder, record) of the runs that `key` (a function of the record) places, in its order."""
    return sorted(((f, a) for f, a in runs.items() if key(a) is not None),
                  key=lambda fa: key(fa[1]))


def _ablations(runs: dict[str, dict]) -> list[tuple]:
    """Notebook 8's ablations, from ConvVAE to the hierarchical VAE, in step order: (folder,
    model kind, model fields the run set, label, what the row changes against the row above)."""
    rows = []
    for folder, a in _ordered(runs, lambda a: a.get("ablation", {}).get("step")):
        step = a["ablation"]
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in step["fields"].items()}
        rows.append((folder, step["model"], fields, step["label"],
                     step.get("changes", a["about"])))
    return rows


RECORDED = records(runtime.results_dir())  # the committed runs' records
ABLATIONS = _ablations(RECORDED)


def _valid_points(history: list[dict]) -> list[tuple]:
    """(validation bits/dim, its s.e. or None, epoch) of every epoch that recorded one."""
    return [(h["valid_bpd"], h.get("valid_bpd_se"), h["epoch"]) for h in history
            if "valid_bpd" in h]


def _epochs(epochs: int, partial, steps: int) -> str:
    """'95 (last partial) (6,729)': epochs, whether the last was cut short, and steps."""
    return f"{epochs}{' (last partial)' if partial else ''} ({steps:,})"


def ablation_rows(results: Path, ablations=ABLATIONS) -> list[dict]:
    """The numbers of each recorded ablation run (see ABLATIONS); a run without eval.json is
    left out. Validation entries are None for a run without a validation split."""
    rows = []
    for folder, kind, fields, label, changed in ablations:
        run = Path(results) / folder
        if not (run / "eval.json").exists():
            continue
        history, ev = _load(run / "history.json"), _load(run / "eval.json")
        net = build_model(preset("cpu", kind=kind, **fields).model)
        valid = _valid_points(history)
        best = min(valid) if valid else (None, None, None)
        rows.append({"folder": folder, "label": label, "changed": changed,
                     "latents": net.latent_dim, "parameters": count_used_parameters(net),
                     "parameters_defined": count_parameters(net),
                     "epochs": history[-1]["epoch"], "partial": bool(history[-1].get("partial")),
                     "steps": history[-1]["step"], "minutes": _minutes(history),
                     "valid_bpd": best[0], "valid_se": best[1], "valid_epoch": best[2],
                     "valid_size": ev.get("valid_size", 0),
                     "elbo": ev["bits_per_dim"], "elbo_se": ev.get("bits_per_dim_se"),
                     "iwae": ev["iwae_bits_per_dim"], "iwae_se": ev.get("iwae_bits_per_dim_se"),
                     "k": ev["num_samples"], "images": ev.get("images", 0),
                     "hardware": ev["hardware"], "precision": history[-1].get("precision", "fp32")})
    return rows


def _pm(value: float, se: float | None) -> str:
    return f"{value:.3f} ± {se:.3f}" if se else f"{value:.3f} (s.e. not recorded)"


def ablation_table(results: Path) -> str:
    """Notebook 8's ablations: what each run changes, its size, its training, and its
    validation (best epoch) and test bits/dim with standard errors over images."""
    lines = ["| run (`results/...`) | what it changes | latent variables "
             "| parameters the loss uses | epochs (steps) | validation ELBO, best (epoch) "
             "| test ELBO | test IWAE | training time | hardware, precision |",
             "|---|" + "---|" * 9]
    for r in ablation_rows(results):
        valid = (f"{_pm(r['valid_bpd'], r['valid_se'])} ({r['valid_epoch']})"
                 if r["valid_bpd"] is not None else "no validation split")
        epochs = _epochs(r["epochs"], r["partial"], r["steps"])
        params = f"{r['parameters'] / 1e6:.2f} M"
        if r["parameters_defined"] != r["parameters"]:
            params += f" ({r['parameters_defined'] / 1e6:.2f} M defined)"
        lines.append(f"| {r['label']} (`{r['folder']}`) | {r['changed']} | {r['latents']:,} "
                     f"| {params} | {epochs} | {valid} "
                     f"| {_pm(r['elbo'], r['elbo_se'])} "
                     f"| {_pm(r['iwae'], r['iwae_se'])} (k={r['k']}) "
                     f"| {r['minutes']:.1f} min | {r['hardware']}, {r['precision']} |")
    return "\n".join(lines)


# Every hierarchical-VAE run tried for its `cpu` preset (issue: 4.2 bits/dim in 30 CPU minutes),
# compared on the validation split only: (folder under results/, the run it changes, the change),
# in the order of their "tried" rows. A tried run keeps its history.json; of the runs made for
# the search, only the chosen one (HVAE_CHOSEN: the lowest best validation ELBO) is evaluated on
# the test images (eval.json) and keeps its weights. The first row, the preset before the
# search, was evaluated for the README before the search began.
HVAE_TRIED = [(f, a["against"], a["about"])
              for f, a in _ordered(RECORDED, lambda a: a.get("tried"))]


VALID_EVAL = "eval-valid.json"  # `evaluate --split valid --per-image` of a run's final model


def paired_gain(run: Path, base: Path) -> tuple[float, float]:
    """(bits/dim gained by `run` over `base`, its standard error): the mean difference of their
    final models' per-image validation ELBOs (two eval-valid.json files), paired image by image,
    so that what the images share cancels; refuses files of different images."""
    a, b = _load(run), _load(base)
    if (a["images"], a["valid_size"], a["valid_seed"]) != (b["images"], b["valid_size"],
                                                            b["valid_seed"]):
        raise ValueError(f"{run} and {base} were not evaluated on the same validation images")
    d, se = paired_difference(torch.tensor(a["elbo_per_image"]), torch.tensor(b["elbo_per_image"]))
    return -losses.bits_per_dim(d), -losses.bits_per_dim(se)


# Trials that repeat another trial's recipe with another seed: run-to-run variation, not a choice
HVAE_REPLICATES = tuple(f for f, _, _ in HVAE_TRIED if RECORDED[f].get("replicate"))


def _best(history: list[dict], folder: str) -> tuple:
    """(best validation bits/dim, its s.e., its epoch) of a tried run's history."""
    valid = _valid_points(history)
    if not valid:
        raise ValueError(f"{folder}: no validation curve; a tried run must hold one out")
    return min(valid)


def tried_table(results: Path, tried=HVAE_TRIED, chosen: str = HVAE_CHOSEN) -> str:
    """The record of hierarchical-VAE runs tried for the `cpu` preset: each change, its best and
    last validation ELBO, its gain against the run it changes (± twice the s.e. of the
    difference), its training, its machine; the test figure only where evaluated (the chosen
    run, and the preset's run from before the search)."""
    lines = ["| run (`results/...`) | change (against) | validation ELBO, best (epoch) "
             "| validation ELBO, last | gain on validation, best vs best (± 2 s.e.) "
             "| gain of the final models, paired on the same images (± 2 s.e.) "
             "| epochs (steps) | training time | hardware, precision | test IWAE |",
             "|---|" + "---|" * 9]
    best_of = {}
    for folder, base, change in tried:
        path = Path(results) / folder / "history.json"
        if not path.exists():
            continue
        history = _load(path)
        best, last = _best(history, folder), _valid_points(history)[-1]
        best_of[folder] = best
        gain = "(the starting point)"
        if base is not None:
            if base not in best_of:
                raise ValueError(f"{folder}: its base run {base} is not recorded above it")
            b = best_of[base]
            noise = 2 * math.sqrt((best[1] or 0) ** 2 + (b[1] or 0) ** 2)
            gain = f"{b[0] - best[0]:+.3f} ± {noise:.3f}"
        paired = "(the starting point)" if base is None else "not measured"
        if base is not None and all((Path(results) / f / VALID_EVAL).exists()
                                    for f in (folder, base)):
            d, se = paired_gain(Path(results) / folder / VALID_EVAL,
                                Path(results) / base / VALID_EVAL)
            paired = f"{d:+.3f} ± {2 * se:.3f}"
        ev_path = Path(results) / folder / "eval.json"
        test = "not evaluated"
        if ev_path.exists():
            ev = _load(ev_path)
            test = (f"{_pm(ev['iwae_bits_per_dim'], ev.get('iwae_bits_per_dim_se'))} "
                    f"(k={ev['num_samples']})")
        more = Path(results) / folder / "eval-k1000.json"  # the same images, more samples
        if more.exists():
            ev = _load(more)
            test += (f"; {_pm(ev['iwae_bits_per_dim'], ev.get('iwae_bits_per_dim_se'))} "
                     f"(k={ev['num_samples']})")
        if folder == chosen:
            test = f"**chosen**: {test}"
        end = history[-1]
        epochs = _epochs(end["epoch"], end.get("partial"), end["step"])
        against = f" (against `{base}`)" if base else ""
        lines.append(f"| `{folder}` | {change}{against} | {_pm(best[0], best[1])} ({best[2]}) "
                     f"| {_pm(last[0], last[1])} | {gain} | {paired} | {epochs} "
                     f"| {_minutes(history):.1f} min "
                     f"| {end.get('hardware', '?')}, {end.get('precision', 'fp32')} | {test} |")
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
    if "precision" in b:  # bench runs since the precision probe
        d = b["precision"]
        lines += ["", f"Precision picked for training: **{d['precision']}** ({d['reason']}; "
                  f"eligible here: {', '.join(d['eligible'])})."]
        rate = {(r["label"], r["precision"]): r["median"] for r in train
                if r.get("label") and not r.get("variant")}
        ratios = [f"{label} {rate[label, 'bf16'] / rate[label, 'fp32']:.2f}x"
                  for label in dict.fromkeys(lab for lab, _ in rate)
                  if (label, "bf16") in rate and (label, "fp32") in rate]
        if ratios:
            lines[-1] += (" Each model's own training step in this run, bf16 against fp32: "
                          + ", ".join(ratios) + ".")
    if b.get("roofline", {}).get("rows"):
        ref = b["roofline"]["reference"]
        rates = ", ".join(f"{p} {ref[p + '_gflops']:,.0f}" for p in ("fp32", "bf16")
                          if p + "_gflops" in ref)
        lines += ["", "Roofline: FLOP per image of one training step (forward and backward, "
                  "counted by `torch.utils.flop_counter`), the GFLOP/s the rows above reach, "
                  f"and their fraction of a reference measured in the same run, {ref['probe']} "
                  f"({rates} GFLOP/s):", "",
                  "| model | precision | MFLOP per image | training images/s | GFLOP/s "
                  "| of the reference convolution |", "|---|---|---|---|---|---|"]
        for r in b["roofline"]["rows"]:
            picked = " (picked)" if r.get("picked") else ""
            lines.append(f"| {r['model']} | {r['precision']}{picked} "
                         f"| {r['mflop_per_image']:,.0f} | {_n(r['images_per_second'])} "
                         f"| {r['gflops']:,.0f} | {100 * r['fraction_of_reference']:.0f}% |")
    if b.get("profile", {}).get("rows"):
        kinds = list(b["profile"]["rows"][0]["kinds"])
        lines += ["", "Where each step's time goes, in the picked precision: the share of the "
                  "operators' own time (torch.profiler, "
                  f"{b['profile']['steps']} steps per model) by kind of operator, and the "
                  "convolutions alone: their FLOP per image, at the row's training rate, in "
                  "their share of the step, against the reference convolution:", "",
                  "| model | " + " | ".join(kinds) + " | convolutions alone: MFLOP per image "
                  "| GFLOP/s | of the reference |", "|---|" + "---|" * (len(kinds) + 3)]
        for r in b["profile"]["rows"]:
            lines.append(f"| {r['model']} | " + " | ".join(
                f"{100 * r['kinds'][k]:.0f}%" for k in kinds)
                + f" | {r['conv_mflop_per_image']:,.0f} | {r['conv_gflops']:,.0f} "
                f"| {100 * r['conv_fraction_of_reference']:.0f}% |")
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
             f"{b['hardware']}, batch {b['batch_size']}, median of {b['repeats']} epochs each, "
             "the two pipelines in turns:", "",
             "| input pipeline, no model | images/s | vs seed |", "|---|---|---|"]
    for r in b["rows"]:
        lines.append(f"| {r['name']} | {_n(r['median'])} | {r.get('speedup_vs_seed', 1.0):.0f}x |")
    return "\n".join(lines)


def gpu_table(results: Path) -> str:
    """Each `gpu-check` folder: its phases against its budget, and its bench table."""
    blocks = []
    for folder, check in gpu_checks(results):
        done = sum(p["status"] == "done" for p in check["phases"])
        lines = [f"`{check['command']}` on {check['hardware']}, torch {check['torch']} "
                 f"(`{folder.name}/`): {done} of {len(check['phases'])} phases done in "
                 f"{check['seconds'] / 60:.1f} min of a {check['budget_minutes']:g}-minute "
                 "budget:", "", "| phase | planned | took | status |", "|---|---|---|---|"]
        for p in check["phases"]:
            status = p["status"] + (f": {p['note']}" if p.get("note") else "")
            lines.append(f"| {p['name']} | {p['planned_seconds']:.0f} s "
                         f"| {p.get('seconds', 0):.0f} s | {status.replace('|', '/')} |")
        if (folder / "bench.json").exists():
            lines += ["", bench_table(folder / "bench.json")]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or (
        f"No GPU has run `gpu-check` yet: no `results/*/{GPU_MANIFEST}`.")


def tables(results: Path = Path("results")) -> dict[str, str]:
    """Every generated table, by marker name."""
    results = Path(results)
    return {"training": training_table(results),
            "time-to-quality": time_to_quality_table(results),
            "ablations": ablation_table(results),
            "data-shift": shift_table(results),
            "bench-cpu": bench_table(results / "bench-cpu.json"),  # make bench, this release
            "bench-cpu-epyc": bench_table(results / "bench-cpu-epyc.json"),  # the one before
            "loading-cpu": loading_table(results / "bench-loading-cpu.json"),
            "gpu": gpu_table(results),
            "hvae-tried": tried_table(results),
            "stability": stability_table(results),
            "tutorial": tutorial_table(results)}


# the files whose markers hold generated tables
FILES = ("README.md", "DATA.md", "results/hvae-tried.md")


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
