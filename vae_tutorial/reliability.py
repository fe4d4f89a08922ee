"""How the main job's runs ended, and how long the main job took: the generated tables of the
stability runs (trained through, recovered after a rollback, failed) and of `make tutorial`'s
step times. `report` writes them into results/hvae-tried.md and README.md.
"""

from __future__ import annotations

from pathlib import Path

from .histories import load_json as _load
from .histories import minutes as _minutes
from .histories import records


def stability_rows(results: Path) -> list[dict]:
    """The stability runs (issue: the main job always finishes), from the runs' records with a
    "stability" entry ({"model", "preset", "seed", "clock"}): how each ended, from its history."""
    rows = []
    for folder, a in records(results).items():
        if "stability" not in a:
            continue
        st, history = a["stability"], _load(Path(results) / folder / "history.json")
        minutes = _minutes(history)
        warm = st.get("kl_warmup_epochs", 0)
        rollbacks = sum(len(r.get("rollback", [])) for r in history)
        finished = (history[-1].get("partial") or minutes >= st["clock"] - 0.5 if st.get("clock")
                    else history[-1]["epoch"] >= st["epochs"])
        split = "valid" if "valid_bpd" in history[-1] else "test"
        rows.append(dict(folder=folder, model=st["model"], seed=st["seed"], clock=st.get("clock"),
                         epochs=history[-1]["epoch"], steps=history[-1]["step"], minutes=minutes,
                         past_warmup=history[-1]["epoch"] >= warm,
                         skipped=sum(r.get("skipped", 0) for r in history),
                         rollbacks=rollbacks, finished=finished,
                         outcome=("failed" if not finished else "trained through" if not rollbacks
                                  else f"recovered after {rollbacks} rollback"
                                  + "s" * (rollbacks > 1)),
                         last=history[-1][split + "_bpd"], split=split,
                         hardware=history[-1].get("hardware", "?"),
                         precision=history[-1].get("precision", "fp32")))
    return sorted(rows, key=lambda r: (r["model"], r["seed"]))


def stability_table(results: Path) -> str:
    """One row per stability run, and the counts: trained through, recovered, failed."""
    rows = stability_rows(results)
    if not rows:
        return "No stability runs recorded yet."
    lines = ["| run (`results/...`) | model, preset | seed | clock | epochs (updates), minutes "
             "| KL warm-up completed | updates skipped | rollbacks | outcome "
             "| last held-out ELBO (bits/dim) | hardware, precision |", "|---|" + "---|" * 10]
    for r in rows:
        clock = f"{r['clock']:g} min" if r["clock"] else "epochs"
        lines.append(f"| `{r['folder']}` | {r['model']} | {r['seed']} | {clock} "
                     f"| {r['epochs']} ({r['steps']:,}), {r['minutes']:.0f} min "
                     f"| {'yes' if r['past_warmup'] else 'no'} "
                     f"| {r['skipped']} | {r['rollbacks']} | {r['outcome']} "
                     f"| {r['last']:.3f} ({r['split']}) | {r['hardware']}, {r['precision']} |")
    counts = {}
    for r in rows:
        key = r["model"]
        through, rolled, failed = counts.get(key, (0, 0, 0))
        counts[key] = (through + (r["finished"] and not r["rollbacks"]),
                       rolled + (r["finished"] and bool(r["rollbacks"])),
                       failed + (not r["finished"]))
    lines.append("")
    for model, (through, rolled, failed) in counts.items():
        lines.append(f"- {model}: {through} trained through without a rollback, {rolled} recovered "
                     f"after one or more, {failed} failed.")
    return "\n".join(lines)


TUTORIAL_STEPS = {"venv": "set-up (.venv, packages)",
                  "jpeg-copy": "the full-size JPEG copy decoded (offline)",
                  "data": "data (checked)",
                  "train": "ConvVAE training", "evaluate": "ConvVAE evaluation (IWAE k=100)",
                  "hvae": "hierarchical VAE: training and evaluation",
                  "notebooks": "every notebook executed"}


def tutorial_steps(path: Path) -> dict:
    """`make tutorial`'s step times (runs/tutorial-steps.txt, kept in results/): {"steps":
    {step: seconds}, "total": seconds, "machine": str}, from its lines `step X: N s`, `total: N
    s` and `machine: ...` (and `how: ...`, a maintainer's line on how the run went, if any)."""
    out = {"steps": {}, "total": None, "machine": "?"}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(": ")
        if key.startswith("step "):
            out["steps"][key[5:]] = int(value.split()[0])
        elif key == "total":
            out["total"] = int(value.split()[0])
        elif key in ("machine", "how"):
            out[key] = value
    return out


def tutorial_table(results: Path) -> str:
    """The minutes of each step of a fresh clone's `make tutorial`, and the machine."""
    path = Path(results) / "tutorial-steps.txt"
    if not path.exists():
        return "No timed `make tutorial` recorded yet."
    t = tutorial_steps(path)
    lines = ["| step (`make ...`) | what | minutes |", "|---|---|---|"]
    lines += [f"| `{s}` | {TUTORIAL_STEPS.get(s, s)} | {sec / 60:.1f} |"
              for s, sec in t["steps"].items()]
    lines.append(f"| | **total** | **{t['total'] / 60:.1f}** |")
    how = f" How it ran: {t['how']}." if t.get("how") else ""
    return "\n".join(lines) + f"\n\nMachine: {t['machine']}.{how}"
