"""Prose metrics of the notebooks' main line: words, sentences, sentence lengths.

    python tools/prose.py [NOTEBOOK.ipynb ...] [--long [N]] [--no-anchors] [--json]

With no notebook given it reads notebooks/*.ipynb. It then prints the same figures for the two
anchors stored in tools/calibration/ (UvA deep-learning tutorial 9 and Pyro's VAE tutorial).

The main line is the text of the markdown cells, less:
  - <details>...</details> blocks (nested ones too) and HTML comments <!-- ... -->;
  - fenced code (``` or ~~~) and indented code blocks (4 spaces after a blank line, outside lists);
  - display maths: $$...$$ and \\begin{...}...\\end{...};
  - table lines (lines that start with |);
  - headings (lines that start with #): titles, not sentences;
  - images, HTML tags and entities, bare URLs; a link [text](url) keeps its text.
Inline maths $...$ and inline code `...` each count as ONE word (they become one token).

Sentences: a paragraph break (blank line), a list item and a heading each end a sentence; inside a
paragraph a sentence ends at . ! or ? (optionally followed by closing quotes, brackets or *)
that is followed by whitespace and then a capital letter, a digit, an opening quote or bracket,
or a maths/code token, or by the end of the paragraph. A period after a known abbreviation
(e.g., i.e., cf., vs., Fig., Eq., al.) ends nothing, nor does a decimal point (3.14: no
space follows). Words: whitespace-separated tokens holding a letter or digit.

Columns: words, sentences, mean words per sentence, % of sentences over 40 words (%>40), % of
words that sit in such sentences (%w>40), the longest sentence, and the number over 60 words.
--long [N] prints every sentence over N words (default 60). Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = {
    "UvA tutorial 9 (anchor)": ROOT / "tools/calibration/uvadlc_tutorial9_AE_CIFAR10.ipynb",
    "Pyro VAE tutorial (anchor)": ROOT / "tools/calibration/pyro_vae.ipynb",
}
MATH, CODE = "\u27e8math\u27e9", "\u27e8code\u27e9"  # one-word tokens for $...$ and `...`
ABBREVIATIONS = {"e.g", "i.e", "cf", "vs", "fig", "figs", "eq", "eqs", "al", "approx", "resp",
                 "sec", "ch", "dr", "mr", "ms", "prof", "viz"}

_DETAILS = re.compile(r"<details\b[^>]*>(?:(?!<details\b).)*?</details\s*>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.S | re.M)
_DISPLAY = re.compile(r"\$\$.*?\$\$|\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S)
_INLINE_MATH = re.compile(r"(?<!\\)\$(?!\s)(?:\\.|[^$\\\n])+?\$")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_URL = re.compile(r"https?://\S+")
_ENTITY = re.compile(r"&[A-Za-z]+;|&#\d+;")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_END = re.compile(r"[.!?][\"'\u2019\u201d)\]*_]*(?=\s+[\"'\u2018\u201c(\[*_]*(?:[A-Z0-9]|"
                  + MATH + "|" + CODE + r")|\s*$)")


def main_line(markdown: str) -> list[str]:
    """The paragraphs (lists of joined lines) of one markdown cell's main line."""
    text = _COMMENT.sub("", markdown)
    while True:  # innermost first, so nested blocks go too
        text, n = _DETAILS.subn("\n\n", text)
        if not n:
            break
    text = _FENCE.sub("\n\n", text)
    text = _DISPLAY.sub("\n\n", text)
    text = _INLINE_CODE.sub(f" {CODE} ", text)
    text = _INLINE_MATH.sub(f" {MATH} ", text)
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _ENTITY.sub(" ", text)
    paragraphs, current, in_list, after_blank = [], [], False, True

    def flush():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            flush()
            after_blank = True
            continue
        indented = line.startswith(("    ", "\t"))
        if stripped.startswith("|") or stripped.startswith("#"):
            flush()  # table line or heading: not main-line prose
        elif indented and after_blank and not in_list:
            flush()  # indented code block
        elif _LIST_ITEM.match(line):
            flush()
            in_list = True
            current.append(_LIST_ITEM.sub("", line).strip())
        else:
            if not indented and after_blank:
                in_list = False
            current.append(stripped.lstrip(">").strip())
        after_blank = False
    flush()
    return paragraphs


def sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences by the rule in the module docstring."""
    out, start = [], 0
    for m in _END.finditer(paragraph):
        if m.group().startswith("."):
            before = re.search(r"(\S+)$", paragraph[start:m.start()])
            word = before.group(1).lower().lstrip("(\"'*_") if before else ""
            if word in ABBREVIATIONS or word.endswith(("e.g", "i.e")):
                continue  # e.g., i.e., et al.: not a sentence end
        out.append(paragraph[start:m.end()].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if count_words(s)]


def count_words(sentence: str) -> int:
    return sum(1 for tok in sentence.split() if tok in (MATH, CODE) or re.search(r"\w", tok))


def notebook_sentences(path: Path) -> list[str]:
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    out = []
    for cell in cells:
        if cell["cell_type"] == "markdown":
            source = cell["source"]
            source = "".join(source) if isinstance(source, list) else source
            for paragraph in main_line(source):
                out.extend(sentences(paragraph))
    return out


def figures(sents: list[str], long: int = 60) -> dict:
    lengths = [count_words(s) for s in sents]
    n = len(lengths)
    return {
        "words": sum(lengths),
        "sentences": n,
        "mean": round(sum(lengths) / n, 1) if n else 0.0,
        "pct_over_40": round(100 * sum(k > 40 for k in lengths) / n, 1) if n else 0.0,
        "pct_words_over_40": round(100 * sum(k for k in lengths if k > 40) / max(1, sum(lengths)),
                                   1),
        "longest": max(lengths, default=0),
        "over_60": sum(k > 60 for k in lengths),
        "long": [s for s, k in zip(sents, lengths) if k > long],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    parser.add_argument("--long", nargs="?", type=int, const=60, default=None, metavar="N",
                        help="print the sentences over N words (default 60)")
    parser.add_argument("--no-anchors", action="store_true", help="skip the calibration rows")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(glob.glob(str(ROOT / "notebooks/*.ipynb")))
    rows = {Path(p).name: Path(p) for p in paths}
    if not args.no_anchors:
        rows.update({name: p for name, p in ANCHORS.items() if p.exists()})
    long = args.long if args.long is not None else 60
    table = {name: figures(notebook_sentences(p), long) for name, p in rows.items()}
    if args.json:
        print(json.dumps({k: {f: v for f, v in t.items() if f != "long"} for k, t in table.items()},
                         indent=1))
        return 0
    width = max(len(n) for n in table) if table else 10
    print(f"{'notebook':<{width}}  words  sent.  mean  %>40  %w>40  longest  >60")
    for name, t in table.items():
        print(f"{name:<{width}}  {t['words']:5d}  {t['sentences']:5d}  {t['mean']:4.1f}  "
              f"{t['pct_over_40']:4.1f}  {t['pct_words_over_40']:5.1f}  {t['longest']:7d}  "
              f"{t['over_60']:3d}")
    if args.long is not None:
        for name, t in table.items():
            for s in t["long"]:
                print(f"\n[{name}, {count_words(s)} words] {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
