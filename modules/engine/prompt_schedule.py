"""A1111's prompt scheduling: ``[from:to:when]`` editing, ``[a|b]`` alternation, ``AND`` parts and ``#`` comments.

Syntax (A1111's prompt_parser, re-implemented as a small backtracking parser):

- ``[from:to:when]`` uses ``from`` until step ``when``, then ``to``; ``[to:when]`` adds ``to`` after ``when``;
  ``[from::when]`` removes ``from`` after ``when``. ``when`` with a ``.`` is a fraction of the steps, else a step
  number. With a hires pass, integers count on past the first pass and fractions run from 1 to 2 for it.
- ``[a|b|c]`` cycles a, b, c, a, … one per step (an empty option is the empty string).
- ``(…)``, ``(…:w)`` and ``[…]`` are emphasis: kept verbatim for the emphasis parser, their inside scheduled too.
- Text that does not parse is used as it is, for every step.
- ``a AND b :0.5`` splits into weighted parts (only the word ``AND`` in capitals, surrounded by spaces).
- ``#`` starts a comment to the end of the line (A1111's default "Enable comments").

``schedule(prompt, steps)`` returns A1111's list of ``(end_step, text)``: a text applies while the sampler's model
call counter (from 0) is ``<= end_step``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_STRAY = re.compile(r"[\[\]():]+")
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Group:
    """Emphasis: the literal brackets around scheduled insides."""

    parts: tuple[object, ...]


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[object, ...]
    after: tuple[object, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[object, ...], ...]


class _Parser:
    """Backtracking recursive descent over the prompt; ``None`` from a rule means "does not match here"."""

    def __init__(self, text: str) -> None:
        self.s = text

    def start(self) -> tuple[object, ...] | None:
        out: list[object] = []
        pos = 0
        while pos < len(self.s):
            parsed = self.prompt(pos)
            if parsed is not None and parsed[1] > pos:
                out.extend(parsed[0])
                pos = parsed[1]
                continue
            stray = _STRAY.match(self.s, pos)
            if stray is None:
                return None  # e.g. a lone "|" outside brackets: A1111's parser fails, the text is used as is
            out.append(_Text(stray.group()))
            pos = stray.end()
        return tuple(out)

    def prompt(self, pos: int) -> tuple[list[object], int]:
        items: list[object] = []
        while pos < len(self.s):
            for rule in (self.scheduled, self.alternate, self.emphasized, self.plain):
                found = rule(pos)
                if found is not None:
                    items.append(found[0])
                    pos = found[1]
                    break
            else:
                break
        return items, pos

    def plain(self, pos: int) -> tuple[object, int] | None:
        match = _PLAIN.match(self.s, pos)
        return (_Text(match.group()), match.end()) if match else None

    def _expect(self, pos: int, char: str) -> int | None:
        return pos + 1 if self.s.startswith(char, pos) else None

    def emphasized(self, pos: int) -> tuple[object, int] | None:
        pairs = {"(": ")", "[": "]"}
        opener = self.s[pos] if pos < len(self.s) else ""
        if opener not in pairs:
            return None
        inner, end = self.prompt(pos + 1)
        parts: list[object] = [_Text(opener), *inner]
        if opener == "(" and self._expect(end, ":") is not None:
            weight, end = self.prompt(end + 1)
            parts += [_Text(":"), *weight]
        close = self._expect(end, pairs[opener])
        if close is None:
            return None
        return _Group((*parts, _Text(pairs[opener]))), close

    def scheduled(self, pos: int) -> tuple[object, int] | None:
        if self._expect(pos, "[") is None:
            return None
        first, end = self.prompt(pos + 1)
        if self._expect(end, ":") is None:
            return None
        found = self._when(end + 1)
        if found is not None:  # [to:when]
            return _Scheduled((), tuple(first), found[0]), found[1]
        second, end2 = self.prompt(end + 1)
        if self._expect(end2, ":") is None:
            return None
        found = self._when(end2 + 1)
        if found is None:
            return None
        return _Scheduled(tuple(first), tuple(second), found[0]), found[1]

    def _when(self, pos: int) -> tuple[str, int] | None:
        ws = _WHITESPACE.match(self.s, pos)
        pos = ws.end() if ws else pos
        number = _NUMBER.match(self.s, pos)
        if number is None:
            return None
        end = number.end()
        ws = _WHITESPACE.match(self.s, end)
        end = ws.end() if ws else end
        close = self._expect(end, "]")
        return (number.group(), close) if close is not None else None

    def alternate(self, pos: int) -> tuple[object, int] | None:
        if self._expect(pos, "[") is None:
            return None
        first, end = self.prompt(pos + 1)
        options = [tuple(first)]
        while self._expect(end, "|") is not None:
            nxt, end = self.prompt(end + 1)
            options.append(tuple(nxt))
        if len(options) < 2 or self._expect(end, "]") is None:
            return None
        return _Alternate(tuple(options)), end + 1


# How ``when`` becomes a step: (int offset, fraction offset) as A1111 ≥ 1.6 reads it (a ``.`` makes it a fraction,
# hires steps count past the base steps), or None for the old timelines ("use_old_scheduling": below 1 a fraction).
Offsets = tuple[int, float] | None


def _when_step(when: str, steps: int, offsets: Offsets) -> int:
    value = float(when)
    if offsets is None:
        value = value * steps if value < 1 else value
    else:
        int_offset, flt_offset = offsets
        value = (value - flt_offset) * steps if "." in when else value - int_offset
    return min(steps, int(value))


def _collect(nodes: tuple[object, ...], steps: int, offsets: Offsets, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _when_step(node.when, steps, offsets)
            if step >= 1:
                out.add(step)
            _collect(node.before, steps, offsets, out)
            _collect(node.after, steps, offsets, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, offsets, out)
        elif isinstance(node, _Group):
            _collect(node.parts, steps, offsets, out)


def _render(nodes: tuple[object, ...], step: int, steps: int, offsets: Offsets) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Group):
            out.append(_render(node.parts, step, steps, offsets))
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps, offsets) else node.after
            out.append(_render(chosen, step, steps, offsets))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps, offsets))
    return "".join(out)


def schedule(prompt: str, steps: int, hires_steps: int | None = None, *, old: bool = False) -> list[tuple[int, str]]:
    """A1111's ``get_learned_conditioning_prompt_schedules`` for one prompt.

    ``old`` is A1111's "use old prompt editing timelines" (``use_old_scheduling``): ``when`` below 1 is a fraction
    of the base steps, anything else a step number, and the hires pass reuses the base pass's timeline.

    >>> schedule("a [b:3]", 10)
    [(3, 'a '), (10, 'a b')]
    >>> schedule("a[b:[c:d:2]:1]e", 10)
    [(1, 'abe'), (2, 'ace'), (10, 'ade')]
    >>> schedule("[fe|]male", 4)
    [(1, 'female'), (2, 'male'), (3, 'female'), (4, 'male')]
    """
    offsets: Offsets
    if old:
        offsets, total = None, steps
    elif hires_steps is None:
        offsets, total = (0, 0.0), steps
    else:
        offsets, total = (steps, 1.0), hires_steps
    tree = _Parser(prompt).start()
    if tree is None:
        return [(total, prompt)]
    ends: set[int] = {total}
    _collect(tree, total, offsets, ends)
    return [(end, _render(tree, end, total, offsets)) for end in sorted(ends)]


def text_at(entries: list[tuple[int, str]], step: int) -> str:
    """The text in effect at model call ``step`` (from 0): the first entry with ``step <= end_step``."""
    for end, text in entries:
        if step <= end:
            return text
    return entries[-1][1]


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``AND`` parts with their weights: ``"a AND b :0.5"`` → ``[("a", 1.0), ("b", 0.5)]``."""
    parts = []
    for part in _AND.split(prompt):
        match = _WEIGHT.match(part)
        text, weight = (match.group(1), match.group(2)) if match else (part, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def strip_comments(text: str) -> str:
    r"""A1111's comment stripping: a line starting with ``#`` goes, and ``#…`` to the end of a line becomes a newline.

    >>> strip_comments("a cat # fluffy\nblue sky")
    'a cat \nblue sky'
    """
    text = re.sub(r"(^|\n)#[^\n]*(\n|$)", "\n", text)
    return re.sub(r"#[^\n]*(\n|$)", "\n", text)


@dataclass(frozen=True)
class ScheduledPrompt:
    """A prompt's ``AND`` parts, each with its weight and schedule."""

    parts: tuple[tuple[float, tuple[tuple[int, str], ...]], ...]

    @classmethod
    def parse(
        cls, prompt: str, steps: int, hires_steps: int | None = None, allow_and: bool = True, *, old: bool = False
    ) -> ScheduledPrompt:
        """Split (when ``allow_and``) and schedule ``prompt`` (``old``: A1111's old prompt-editing timelines)."""
        pieces = split_and(prompt) if allow_and else [(prompt, 1.0)]
        return cls(tuple((w, tuple(schedule(text, steps, hires_steps, old=old))) for text, w in pieces))

    def texts(self) -> set[str]:
        """Every distinct text any step uses."""
        return {text for _, entries in self.parts for _, text in entries}

    def at(self, step: int) -> list[tuple[str, float]]:
        """(text, weight) of each part at model call ``step``."""
        return [(text_at(list(entries), step), w) for w, entries in self.parts]

    @property
    def is_static(self) -> bool:
        """One part with one text: nothing changes from step to step."""
        return len(self.parts) == 1 and len(self.parts[0][1]) == 1 and self.parts[0][0] == 1.0


def old_timelines_differ(prompts: Iterable[str], steps: int) -> bool:
    """Whether the old prompt-editing timelines schedule any of ``prompts`` differently over ``steps``.

    A1111 then writes ``Old prompt editing timelines: True`` into the infotext.
    """
    return any(schedule(p, steps) != schedule(p, steps, old=True) for p in prompts if "[" in p)
