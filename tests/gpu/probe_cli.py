"""The command line the checkpoint probes share: ``CHECKPOINT… [--runs N] [--out FILE]``, results as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def parser(description: str, runs: int = 5) -> argparse.ArgumentParser:
    """Checkpoints, ``--runs`` and ``--out``; a probe adds its own options."""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("checkpoints", nargs="+", type=Path)
    parse.add_argument("--runs", type=int, default=runs)
    parse.add_argument("--out", type=Path)
    return parse


def report(results: list[dict[str, Any]], out: Path | None) -> int:
    """Print the results as JSON, write them to ``out`` too when given; the exit status (0)."""
    text = json.dumps(results, indent=1)
    print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    return 0
