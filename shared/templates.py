"""Templates (SPEC §4) and conditions (SPEC §5): pure functions, no I/O.

``env`` is ``{"kws": dict, "results": list, "task": {"id", "job_id", "attempt", "group"}}`` where
``results`` holds the results of stages 0..current-1.

Decisions beyond the SPEC text
------------------------------
Templates
* A string that is exactly ``"{{ path }}"`` (no text or whitespace outside the braces) yields the referenced
  value, type preserved (a deep copy, so callers may mutate it). Any other string with templates is
  interpolated: strings go in as-is, other values as compact JSON (``null`` for None, non-ASCII kept).
* ``{{ path ?? default }}``: the text after the first ``??`` is a JSON literal (``json.loads``) used only when
  the path is missing; a present ``null`` is not missing. A template ends at the first ``}}`` not followed by
  another ``}``, so ``{{ kws.a ?? {} }}`` works; a default containing ``}}`` mid-text must be spaced
  (``{"a": {"b": 1} }``). A ``{{`` without a closing ``}}`` is literal text.
* Paths: ``.``-separated segments without whitespace or braces; roots ``kws``, ``results``, ``task``
  (fields ``id``, ``job_id``, ``attempt``, ``group``). A bare root yields the whole object. On a list a
  segment must be an integer and negative ones count from the end (``results.-1`` is the previous stage); on
  an object a segment is always a key (``"0"`` is the key ``"0"``). Keys containing ``.`` cannot be addressed.
* Missing = absent key, index out of range, non-integer index on a list, or descent into a scalar/null;
  without default that raises TemplateError naming the path. A malformed template (bad segment, unknown root
  or task field, non-integer stage index, bad default JSON) is an error even when it has a default.
* Templates apply in dict values and list items, never in keys. ``{"$raw": v}`` (sole key) becomes ``v``
  untouched. Values taken from kws/results are never re-scanned for templates.
Conditions
* In a condition object ``not``/``all``/``any`` are combinators only when they are its single key; otherwise
  every key is a path (template syntax without braces). ``{}`` is true, ``[]`` and ``{"any": []}`` are false.
* A matcher object whose keys are all operator names is an operator matcher (all must hold); one without any
  operator key is an equality literal; a mix is an error ("unknown operator"). To compare with an object whose
  keys look like operators, use ``{"eq": {...}}``.
* Matcher values are templates, filled once before evaluation; data they pull in is never re-templated.
* Equality is JSON equality: ``true`` never equals ``1`` (also nested); ``1 == 1.0``.
* gt/ge/lt/le hold only between two numbers (booleans excluded) or two strings; otherwise false.
* ``in``: member of a list, substring of a string, key of an object; ``has`` is the reverse. Anything else is
  false. ``match`` is a regex search on a string value (``re`` syntax and meaning, run by the ``regex``
  package so that it can be cut off, see Limits); non-strings are false.
* A path that does not resolve makes every operator false except ``exists: false``: a missing path never
  fails a stage. Errors come only from a malformed condition, a bad regex, or a template error in a value.
* Combinators short-circuit, so run-time errors in unevaluated branches are not raised; validate_condition
  catches the static ones when the task is created.
Limits (ValueError from validate_*, TemplateError at run time)
* MAX_DEPTH nested containers in a params value or condition (validation also counts inside ``$raw``);
  MAX_TEMPLATE_LEN chars for a string containing ``{{`` and for a condition path; MAX_PATH_SEGMENTS per path;
  MAX_REGEX_LEN pattern chars; MAX_MATCH_SUBJECT_LEN subject chars.
* Patterns come from task authors, and a templated pattern inserts data verbatim (not escaped), so a
  pattern may backtrack catastrophically (``(a+)+$`` on ``aaa...b``). Python's ``re`` cannot be stopped,
  so a pattern is checked with ``re`` (the syntax and error messages stay those of ``re``) and searched
  with the ``regex`` package (VERSION0, compatible with ``re`` but for two constructs no one writes for
  ``re``: ``[[:alpha:]]`` is a POSIX class, where ``re`` warns of a possible nested set, and ``{e<=1}`` after
  an item is a fuzzy-match constraint, not literal text), which takes a timeout: all the ``match``
  operators of one condition evaluation share MAX_REGEX_SECONDS of search time, beyond which the
  evaluation fails with a TemplateError naming the path. ``regex`` unrolls a repeat ``{m}`` / ``{m,}`` into
  m copies when it compiles (``x{4294967294}`` exhausts memory), so a pattern whose repeats unroll to more
  than MAX_REGEX_UNROLLED items is refused.
* MAX_OUTPUT_LEN chars of template output per fill / check call (interpolated text, plus the JSON size of
  values taken whole), so a few short templates cannot copy a large value into a huge result.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import operator
import re
import re._constants as _re_constants  # the parse tree of re, to size a pattern before regex compiles it
import re._parser as _re_parser
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

MAX_DEPTH = 32
MAX_TEMPLATE_LEN = 4096
MAX_PATH_SEGMENTS = 32
MAX_REGEX_LEN = 1000
MAX_MATCH_SUBJECT_LEN = 100_000
MAX_REGEX_UNROLLED = 2000  # items, a repeat's body counted min-count times (~150 bytes each once compiled)
MAX_REGEX_SECONDS = 0.1  # search time of all the `match` operators of one condition evaluation
MAX_OUTPUT_LEN = 16 * 1024 * 1024  # chars of template output per fill / check call

ROOTS = frozenset({"kws", "results", "task"})
TASK_FIELDS = frozenset({"id", "job_id", "attempt", "group"})
OPERATORS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "in", "has", "match", "exists"})
COMBINATORS = frozenset({"not", "all", "any"})

# Closing on the last "}}" of a run of braces lets a default end in "}" ("{{kws.a??{}}}").
_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}(?!\})", re.DOTALL)
_SEGMENT_RE = re.compile(r"[^\s.{}]+")
_INDEX_RE = re.compile(r"-?[0-9]+")
_ORDER = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
_MISSING: Any = object()


class InvalidTemplate(ValueError):
    """What validate_template / validate_condition raise: ``where`` names the location
    (``task.commands[0].params.a``), ``reason`` says what is wrong."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class TemplateError(Exception):
    """A template or condition could not be evaluated (the attempt fails with TEMPLATE_ERROR)."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason, path)  # both in args so the error survives pickling
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class _Ref(NamedTuple):
    path: str
    segments: tuple[str, ...]
    default: str | None  # JSON text, decoded per use so no two results share one object


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _enter(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise TemplateError(f"nested deeper than {MAX_DEPTH} levels")
    return depth + 1


@functools.lru_cache(maxsize=1024)
def _parse_path(path: str) -> tuple[str, ...]:
    if not path:
        raise TemplateError("empty path")
    if len(path) > MAX_TEMPLATE_LEN:
        raise TemplateError(f"path longer than {MAX_TEMPLATE_LEN} chars")
    segments = tuple(path.split("."))
    if len(segments) > MAX_PATH_SEGMENTS:
        raise TemplateError(f"more than {MAX_PATH_SEGMENTS} path segments", path)
    for seg in segments:
        if not _SEGMENT_RE.fullmatch(seg):
            raise TemplateError(f"bad path segment {seg!r}", path)
    root = segments[0]
    if root not in ROOTS:
        raise TemplateError(f"unknown root {root!r} (expected kws, results or task)", path)
    if len(segments) > 1:
        # Both are always wrong whatever the data, so they are caught at creation rather than treated as missing.
        if root == "task" and segments[1] not in TASK_FIELDS:
            raise TemplateError(f"unknown task field {segments[1]!r}", path)
        if root == "results" and not _INDEX_RE.fullmatch(segments[1]):
            raise TemplateError(f"bad stage index {segments[1]!r}", path)
    return segments


@functools.lru_cache(maxsize=1024)
def _parse_ref(body: str) -> _Ref:
    path_text, sep, default = body.partition("??")
    path = path_text.strip()
    segments = _parse_path(path)
    if not sep:
        return _Ref(path, segments, None)
    default = default.strip()
    try:
        json.loads(default)
    except (ValueError, RecursionError):  # RecursionError: "[[[[...", nested past what json decodes
        raise TemplateError(f"default is not a JSON literal: {default[:100]!r}", path) from None
    return _Ref(path, segments, default)


def _resolve(segments: tuple[str, ...], env: Mapping[str, Any]) -> tuple[Any, str]:
    """(value, "") or (_MISSING, why)."""
    cur = env.get(segments[0], _MISSING)
    if cur is _MISSING:
        return _MISSING, f"missing root {segments[0]!r}"
    for seg in segments[1:]:
        if isinstance(cur, Mapping):
            if seg not in cur:
                return _MISSING, f"missing key {seg!r}"
            cur = cur[seg]
        elif isinstance(cur, list | tuple):
            if not _INDEX_RE.fullmatch(seg):
                return _MISSING, f"bad list index {seg!r}"
            i = int(seg)
            if not -len(cur) <= i < len(cur):
                return _MISSING, f"index {i} out of range (length {len(cur)})"
            cur = cur[i]
        else:
            return _MISSING, f"cannot descend into {_kind(cur)} at {seg!r}"
    return cur, ""


def _lookup(ref: _Ref, env: Mapping[str, Any]) -> Any:
    value, why = _resolve(ref.segments, env)
    if value is not _MISSING:
        return value
    if ref.default is None:
        raise TemplateError(why, ref.path)
    return json.loads(ref.default)


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TemplateError(f"value is not JSON: {e}") from None


class _Budget:
    """What one fill / check call may still spend: template output and regex search time."""

    __slots__ = ("chars", "deadline")

    def __init__(self) -> None:
        self.chars = MAX_OUTPUT_LEN
        self.deadline: float | None = None  # set by the first regex search

    def spend(self, text: str, path: str) -> str:
        self.chars -= len(text)
        if self.chars < 0:
            raise TemplateError(f"templates produce more than {MAX_OUTPUT_LEN} chars", path)
        return text

    def seconds_left(self) -> float:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + MAX_REGEX_SECONDS
        return self.deadline - now


def _scan_end(s: str) -> int:
    """Where the last template of ``s`` can end. A failed match attempt means no later one can succeed
    (no closing ``}}`` is left), so searching only up to here keeps a run of ``{{`` from being scanned
    again from each of its positions (quadratic)."""
    return s.rfind("}}") + 2


def _refs(s: str) -> list[_Ref]:
    if len(s) > MAX_TEMPLATE_LEN:
        raise TemplateError(f"templated string longer than {MAX_TEMPLATE_LEN} chars")
    return [_parse_ref(m.group(1)) for m in _TEMPLATE_RE.finditer(s, 0, _scan_end(s))]


def _whole(ref: _Ref, env: Mapping[str, Any], budget: _Budget) -> Any:
    """The value of an exact template: a copy (a JSON round trip, which also measures it)."""
    value = _lookup(ref, env)
    if isinstance(value, str):
        return budget.spend(value, ref.path)
    if isinstance(value, Mapping | list | tuple):
        return json.loads(budget.spend(_to_text(value), ref.path))
    return value  # a number, a boolean or null


def _fill_str(s: str, env: Mapping[str, Any], budget: _Budget) -> Any:
    if "{{" not in s:
        return s
    _refs(s)  # parse every template first so a bad one fails even if an earlier one is missing
    m = _TEMPLATE_RE.match(s)
    if m is not None and m.end() == len(s):
        return _whole(_parse_ref(m.group(1)), env, budget)

    def one(m: re.Match[str]) -> str:
        ref = _parse_ref(m.group(1))
        return budget.spend(_to_text(_lookup(ref, env)), ref.path)

    end = _scan_end(s)
    # re.sub never rescans what it inserted, so data that looks like a template stays data.
    return _TEMPLATE_RE.sub(one, s[:end]) + s[end:]


def _is_raw(value: Mapping[Any, Any]) -> bool:
    return len(value) == 1 and "$raw" in value


def _fill(value: Any, env: Mapping[str, Any], depth: int, budget: _Budget) -> Any:
    if isinstance(value, str):
        return _fill_str(value, env, budget)
    if isinstance(value, Mapping):
        if _is_raw(value):
            return copy.deepcopy(value["$raw"])
        depth = _enter(depth)
        return {k: _fill(v, env, depth, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        depth = _enter(depth)
        return [_fill(v, env, depth, budget) for v in value]
    return value


def fill(value: Any, env: Mapping[str, Any]) -> Any:
    """A copy of a params value with every template replaced (see the module docstring)."""
    return _fill(value, env, 0, _Budget())


# ---- conditions -------------------------------------------------------------------------------------------


def _combinator(cond: Mapping[str, Any]) -> str | None:
    if len(cond) == 1:
        (key,) = cond
        if key in COMBINATORS:
            return str(key)
    return None


def _operators(matcher: Any, path: str) -> Mapping[str, Any] | None:
    """The operators of an operator matcher, None for an equality literal."""
    if not isinstance(matcher, Mapping) or not any(k in OPERATORS for k in matcher):
        return None
    for k in matcher:
        if k not in OPERATORS:
            raise TemplateError(f"unknown operator {k!r}", path)
    return matcher


def _json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_json_eq, a, b))
    return bool(a == b)


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, list | tuple):
        return any(_json_eq(x, item) for x in container)
    if isinstance(container, str | Mapping):
        return isinstance(item, str) and item in container
    return False


def _orderable(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return True
    return all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))


_REPEATS = frozenset({_re_constants.MAX_REPEAT, _re_constants.MIN_REPEAT, _re_constants.POSSESSIVE_REPEAT})


def _subpatterns(av: Any) -> Iterator[Any]:
    if isinstance(av, _re_parser.SubPattern):
        yield av
    elif isinstance(av, list | tuple):
        for x in av:
            yield from _subpatterns(x)


def _unrolled(items: Any) -> int:
    """The items of a parsed pattern, each repeat's body counted min-count times (at least once)."""
    total = 0
    for op, av in items:
        if op in _REPEATS:
            low, _high, body = av
            total += max(low, 1) * _unrolled(body)
        else:
            total += 1 + sum(_unrolled(sub) for sub in _subpatterns(av))
        if total > MAX_REGEX_UNROLLED:
            break
    return total


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> Any:
    """The compiled regex.Pattern; TemplateError (without a path) when it is refused."""
    try:
        re.compile(pattern)  # the syntax (and the error messages) of re
        size = _unrolled(_re_parser.parse(pattern))
    except re.error as e:
        raise TemplateError(f"bad regex: {e}") from None
    except RecursionError:
        raise TemplateError("bad regex: nested too deeply") from None
    if size > MAX_REGEX_UNROLLED:
        raise TemplateError(f"regex too large: its repeats unroll to more than {MAX_REGEX_UNROLLED} items")
    import regex  # here, not at the top: ~1.3 MB and ~5 ms that a process without `match` never needs

    try:
        return regex.compile(pattern, flags=regex.VERSION0, cache_pattern=False)
    except (regex.error, ValueError, OverflowError, RecursionError) as e:
        raise TemplateError(f"bad regex: {e}") from None


def _regex(pattern: Any, path: str | None) -> Any:
    if not isinstance(pattern, str):
        raise TemplateError("'match' needs a string pattern", path)
    if len(pattern) > MAX_REGEX_LEN:
        raise TemplateError(f"regex longer than {MAX_REGEX_LEN} chars", path)
    try:
        return _compile(pattern)
    except TemplateError as e:
        raise TemplateError(e.reason, path) from None


def _search(pattern: str, subject: str, path: str, budget: _Budget) -> bool:
    compiled = _regex(pattern, path)
    try:
        left = budget.seconds_left()
        if left <= 0:
            raise TimeoutError
        return compiled.search(subject, timeout=left) is not None
    except TimeoutError:
        raise TemplateError(
            f"regex took longer than {MAX_REGEX_SECONDS} s (the search time of one condition)", path
        ) from None


def _apply(op: str, actual: Any, arg: Any, path: str, budget: _Budget) -> bool:
    if actual is _MISSING:
        return op == "exists" and arg is False
    if op == "exists":
        return arg is True
    if op == "eq":
        return _json_eq(actual, arg)
    if op == "ne":
        return not _json_eq(actual, arg)
    if op == "in":
        return _contains(arg, actual)
    if op == "has":
        return _contains(actual, arg)
    if op == "match":
        if not isinstance(actual, str):
            return False
        if len(actual) > MAX_MATCH_SUBJECT_LEN:
            raise TemplateError(f"'match' subject longer than {MAX_MATCH_SUBJECT_LEN} chars", path)
        return _search(arg, actual, path, budget)
    return _orderable(actual, arg) and _ORDER[op](actual, arg)


def _matches(path: str, matcher: Any, env: Mapping[str, Any], depth: int, budget: _Budget) -> bool:
    segments = _parse_path(path)
    ops = _operators(matcher, path)
    if ops is None:
        args = {"eq": _fill(matcher, env, depth, budget)}
    else:
        depth = _enter(depth)
        args = {op: _fill(v, env, depth, budget) for op, v in ops.items()}
    # Argument errors are raised before evaluating so they do not depend on the data or on operator order.
    for op, arg in args.items():
        if op == "exists" and not isinstance(arg, bool):
            raise TemplateError("'exists' needs true or false", path)
        if op == "match":
            _regex(arg, path)
    actual, _ = _resolve(segments, env)
    return all(_apply(op, actual, arg, path, budget) for op, arg in args.items())


def _check(cond: Any, env: Mapping[str, Any], depth: int, budget: _Budget) -> bool:
    depth = _enter(depth)
    if isinstance(cond, list | tuple):
        return any(_check(c, env, depth, budget) for c in cond)
    if not isinstance(cond, Mapping):
        raise TemplateError(f"a condition must be an object or a list, not {_kind(cond)}")
    comb = _combinator(cond)
    if comb == "not":
        return not _check(cond[comb], env, depth, budget)
    if comb is not None:
        items = cond[comb]
        if not isinstance(items, list | tuple):
            raise TemplateError(f"{comb!r} needs a list")
        outcomes = (_check(c, env, depth, budget) for c in items)
        return all(outcomes) if comb == "all" else any(outcomes)
    return all(_matches(str(path), m, env, depth, budget) for path, m in cond.items())


def check(condition: Any, env: Mapping[str, Any]) -> bool:
    """Evaluate a Condition (SPEC §5); raises TemplateError only for malformed conditions or values."""
    return _check(condition, env, 0, _Budget())


# ---- static validation ------------------------------------------------------------------------------------


# A location, spelled out only when it is reported: (parent, key) for ".key", (parent, i) for "[i]".
# Building "a.<long key>[i]" for every item below a long key would copy the key once per item.
_Loc = str | tuple["_Loc", str | int]


def _spell(loc: _Loc) -> str:
    steps: list[str] = []
    while isinstance(loc, tuple):
        loc, step = loc
        steps.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return loc + "".join(reversed(steps))


@contextlib.contextmanager
def _at(loc: _Loc, *, bare: bool = False) -> Iterator[None]:
    """Report a TemplateError as the ValueError validation raises, prefixed with the location."""
    try:
        yield
    except TemplateError as e:
        raise InvalidTemplate(_spell(loc), e.reason if bare else str(e)) from None


def _strings(value: Any, loc: _Loc, depth: int = 0, raw: bool = False) -> Iterator[tuple[_Loc, str]]:
    """(location, string) for every string templating would touch, enforcing MAX_DEPTH on the way."""
    if isinstance(value, str):
        if not raw and "{{" in value:
            yield loc, value
    elif isinstance(value, Mapping):
        with _at(loc):
            depth = _enter(depth)
        raw = raw or _is_raw(value)
        for k, v in value.items():
            yield from _strings(v, (loc, str(k)), depth, raw)
    elif isinstance(value, list | tuple):
        with _at(loc):
            depth = _enter(depth)
        for i, v in enumerate(value):
            yield from _strings(v, (loc, i), depth, raw)


def _validate_value(value: Any, loc: str, depth: int = 0) -> list[_Ref]:
    refs: list[_Ref] = []
    for where, s in _strings(value, loc, depth):
        with _at(where):
            refs.extend(_refs(s))
    return refs


def validate_template(value: Any, where: str = "params") -> None:
    """Check every template inside a params value; ValueError names the location."""
    _validate_value(value, where)


def template_paths(value: Any) -> set[str]:
    """The paths referenced by the templates of a params value (ValueError like validate_template)."""
    return {ref.path for ref in _validate_value(value, "value")}


def _arg_problem(op: str, arg: Any) -> str | None:
    templated = isinstance(arg, str) and "{{" in arg
    if op == "exists" and not (isinstance(arg, bool) or templated):
        return "'exists' needs true or false"
    if op == "match":
        if not isinstance(arg, str):
            return "'match' needs a string pattern"
        if not templated:
            try:
                _regex(arg, None)
            except TemplateError as e:
                return e.reason
    if op == "in" and not isinstance(arg, str | list | tuple | Mapping):
        return "'in' needs a list, string or object"
    if op in _ORDER and not (isinstance(arg, str | int | float) and not isinstance(arg, bool)):
        return f"{op!r} needs a number or a string"
    return None


def _validate_cond(cond: Any, loc: str, depth: int) -> None:
    with _at(loc):
        depth = _enter(depth)
    if isinstance(cond, list | tuple):
        for i, c in enumerate(cond):
            _validate_cond(c, f"{loc}[{i}]", depth)
        return
    if not isinstance(cond, Mapping):
        raise InvalidTemplate(loc, f"a condition must be an object or a list, not {_kind(cond)}")
    comb = _combinator(cond)
    if comb == "not":
        _validate_cond(cond[comb], f"{loc}.not", depth)
    elif comb is not None:
        items = cond[comb]
        if not isinstance(items, list | tuple):
            raise InvalidTemplate(f"{loc}.{comb}", "needs a list")
        for i, c in enumerate(items):
            _validate_cond(c, f"{loc}.{comb}[{i}]", depth)
    else:
        for path, matcher in cond.items():
            _validate_matcher(str(path), matcher, f"{loc}.{path}", depth)


def _validate_matcher(path: str, matcher: Any, loc: str, depth: int) -> None:
    with _at(loc, bare=True):
        _parse_path(path)
        ops = _operators(matcher, path)
    if ops is None:
        _validate_value(matcher, loc, depth)
        return
    with _at(loc):
        depth = _enter(depth)
    for op, arg in ops.items():
        _validate_value(arg, f"{loc}.{op}", depth)
        problem = _arg_problem(op, arg)
        if problem:
            raise InvalidTemplate(f"{loc}.{op}", problem)


def validate_condition(condition: Any, where: str = "if") -> None:
    """Static check of a Condition at task creation; ValueError names the location."""
    _validate_cond(condition, where, 0)
