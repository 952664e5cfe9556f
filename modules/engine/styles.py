"""Prompt styles (A1111's ``styles.csv``): named prompt and negative-prompt texts merged into a job's prompts.

Files: ``styles.csv`` in the data dir, or the ``--styles-file`` files (repeatable, wildcards allowed). Columns
``name,prompt,negative_prompt`` (the old ``name,text`` form is read too); rows whose name starts with ``#`` are
ignored; a name in a later file replaces the same name in an earlier one. A style with ``{prompt}`` in it puts the
user's prompt there; otherwise its text is appended after ``", "``. Styles apply in the order given, to the prompt,
the negative prompt and the hires prompts when those are set; the infotext shows the prompts with them applied, as
A1111's does. The files are read again when they change.

The style editor saves and deletes styles (:meth:`StyleLibrary.save`, :meth:`StyleLibrary.delete`): a style is
written to the file it came from, a new one to the first file; every other row (comments, columns this app does
not know) is kept as it was, the file is replaced atomically, and the version before goes to ``<file>.bak``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import logging
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modules.engine.files import write_text_atomic
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    """One row of a styles file."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style: str, prompt: str) -> str:
    """``prompt`` with one style text applied (A1111's rule: ``{prompt}`` replaced, else appended after ", ")."""
    if PLACEHOLDER in style:
        return style.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


def read_styles(path: Path) -> list[PromptStyle]:
    """The styles of one CSV file (a missing file has none)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.DictReader(file, skipinitialspace=True))
    styles = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue
        prompt = row.get("prompt") if "prompt" in row else row.get("text")
        styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or ""))
    return styles


def unmerge(style: str, prompt: str) -> str | None:
    """``prompt`` without ``style`` where ``merge`` would have put it, or None when it is not there (A1111's rule)."""
    text, style = prompt.strip(), style.strip()
    if PLACEHOLDER in style:
        left, _, right = style.partition(PLACEHOLDER)
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            return text[len(left) : len(text) - len(right)]
        return None
    if not text.endswith(style):
        return None
    rest = text[: len(text) - len(style)]
    return rest[:-2] if rest.endswith(", ") else rest


class StyleLibrary:
    """The styles of the configured files (``patterns``: paths, wildcards allowed)."""

    def __init__(self, patterns: Iterable[str | Path]) -> None:
        self.patterns = [str(p) for p in patterns]
        self._write_lock = threading.Lock()

    def files(self) -> list[Path]:
        """The files the patterns name now (a plain path also when it does not exist yet)."""
        found: list[Path] = []
        for pattern in self.patterns:
            if any(char in pattern for char in "*?["):
                found += [Path(m) for m in sorted(glob.glob(pattern))]  # noqa: PTH207 (Path.glob: relative only)
            else:
                found.append(Path(pattern))
        return found

    def styles(self) -> dict[str, PromptStyle]:
        """Every style by name, in file order (a later file's style replaces an earlier one of the same name)."""
        styles: dict[str, PromptStyle] = {}
        for path in self.files():
            try:
                for style in read_styles(path):
                    styles[style.name] = style
            except (OSError, csv.Error, UnicodeDecodeError) as exc:
                logger.warning("Styles file %s not read: %s", path, exc)
        return styles

    def source(self, name: str) -> Path | None:
        """The file the style ``name`` is read from (the last one that has it), or None."""
        found = None
        for path in self.files():
            try:
                if any(style.name == name for style in read_styles(path)):
                    found = path
            except (OSError, csv.Error, UnicodeDecodeError):
                continue
        return found

    def save(self, style: PromptStyle) -> Path:
        """Write ``style`` (a new one, or a new text for one there is) and return the file it went to.

        Raises:
            InvalidRequestError: No name, a name starting with ``#`` (a comment), or no file to write to.
        """
        name = style.name.strip()
        if not name or name.startswith("#"):
            raise InvalidRequestError("style name: give a name that does not start with '#'")
        style = PromptStyle(name, style.prompt, style.negative_prompt)
        target = self.source(name) or next(iter(self.files()), None)
        if target is None:
            raise InvalidRequestError("styles: no styles file to write to (the --styles-file patterns match none)")
        with self._write_lock:
            header, rows = _raw_rows(target)
            row = {"name": name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            index = next((i for i, r in enumerate(rows) if (r.get("name") or "").strip() == name), None)
            if index is None:
                rows.append(row)
            else:
                rows[index] = {**rows[index], **row}
            _write_rows(target, header, rows)
        logger.info("Style %r saved to %s", name, target)
        return target

    def delete(self, name: str) -> Path:
        """Take the style ``name`` out of the file it is read from, and return that file.

        Raises:
            InvalidRequestError: No style of that name.
        """
        target = self.source(name)
        if target is None:
            raise InvalidRequestError(f"styles: {name!r} not found (styles: {', '.join(self.styles()) or 'none'})")
        with self._write_lock:
            header, rows = _raw_rows(target)
            _write_rows(target, header, [r for r in rows if (r.get("name") or "").strip() != name])
        logger.info("Style %r deleted from %s", name, target)
        return target

    def detect(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles a pasted infotext's prompts carry, and the prompts without them (A1111's "Apply if any").

        Styles are taken off the end (or the ``{prompt}`` frame) one at a time, each style at most once, while one
        matches both prompts; the names come back in the order they were applied.
        """
        left = [s for s in self.styles().values() if s.prompt or s.negative_prompt]
        found: list[str] = []
        while True:
            for style in left:
                positive, negative = unmerge(style.prompt, prompt), unmerge(style.negative_prompt, negative_prompt)
                if positive is not None and negative is not None:
                    prompt, negative_prompt = positive, negative
                    found.append(style.name)
                    left.remove(style)
                    break
            else:
                return list(reversed(found)), prompt, negative_prompt

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with its ``styles`` applied to its prompts (unchanged without styles).

        Raises:
            InvalidRequestError: A style name that no styles file has; the message lists those there are.
        """
        if not request.styles:
            return request
        known = self.styles()
        missing = [name for name in request.styles if name not in known]
        if missing:
            names = ", ".join(known) or "none (styles.csv is empty or missing)"
            raise InvalidRequestError(f"styles: {', '.join(map(repr, missing))} not found (styles: {names})")
        chosen = [known[name] for name in request.styles]
        fields = {"prompt": "prompt", "negative_prompt": "negative_prompt"}
        fields |= {"hr_prompt": "prompt", "hr_negative_prompt": "negative_prompt"}
        changes = {}
        for field, part in fields.items():
            text = getattr(request, field)
            if field.startswith("hr_") and not text:
                continue  # an empty hires prompt means "the first pass's prompt", which has the styles already
            for style in chosen:
                text = merge(getattr(style, part), text) if getattr(style, part) else text
            changes[field] = text
        return dataclasses.replace(request, **changes)


_COLUMNS = ["name", "prompt", "negative_prompt"]


def _raw_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Every row of a styles file as written (comments too), and its header in the current form.

    The old ``text`` column becomes ``prompt``; columns this app does not know stay, after the three it knows.
    """
    if not path.is_file():
        return list(_COLUMNS), []
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        rows = [dict(row) for row in reader]
        fields = list(reader.fieldnames or [])
    for row in rows:
        if "text" in row and "prompt" not in row:
            row["prompt"] = row.pop("text")
        row.pop(None, None)  # a row with more cells than the header has: the extra cells have no column
    extra = [f for f in fields if f not in (*_COLUMNS, "text")]
    return [*_COLUMNS, *extra], rows


def _write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """Replace ``path`` atomically with ``rows``; the file as it was goes to ``<path>.bak`` first."""
    if path.is_file():
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
