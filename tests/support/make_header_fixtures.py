"""Write ``tests/fixtures/headers/<kind>-<size>.json`` (checkpoint keys → shapes) for every generator kind and size.

The headers are built on the meta device, so even the full-size SDXL costs no memory. Detection tests read them
instead of real checkpoints. Usage: ``python -m tests.support.make_header_fixtures [--check] [OUT_DIR]``; with
``--check`` nothing is written and the exit code says whether the files on disk are up to date.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.ldm_yaml import SIZES
from tests.support.tiny_checkpoints import ALL_KINDS, header_shapes

logger = logging.getLogger(__name__)

HEADERS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "headers"


def header_json(shapes: Mapping[str, Sequence[int]]) -> str:
    """Return a header as JSON text with one key per line (small diffs, easy to grep).

    Args:
        shapes: ``{key: shape}``.

    Returns:
        The JSON text, ending with a newline.
    """
    lines = [f"{json.dumps(key)}: {json.dumps(list(shape))}" for key, shape in sorted(shapes.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def header_files() -> dict[str, str]:
    """Return ``{file name: JSON text}`` for every kind and size."""
    return {f"{kind}-{size}.json": header_json(header_shapes(kind, size)) for kind in ALL_KINDS for size in SIZES}


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the header fixtures.

    Args:
        argv: The arguments (without the program name); ``sys.argv[1:]`` when None.

    Returns:
        0 on success; 1 if ``--check`` found a missing or stale file.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.support.make_header_fixtures", description=__doc__)
    parser.add_argument("out_dir", nargs="?", type=Path, default=HEADERS_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = []
    for name, text in header_files().items():
        path = args.out_dir / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        logger.info("wrote %s (%d keys)", path, text.count("\n") - 2)
    if stale:
        logger.error("stale header fixtures (run python -m tests.support.make_header_fixtures): %s", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
