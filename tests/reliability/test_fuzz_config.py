"""Fuzzed configuration files through :func:`load_config`.

Each example takes the full default tree (every key written out) and breaks it one way: an unknown
key, a value of the wrong type, a negative or non-finite number, a deleted key, random segments
(inverted, overlapping, open in the middle), a broken ``markets`` list, or a file that is not YAML at
all. The only outcomes allowed: a valid :class:`Config`, or a :class:`ConfigError` that names the
key path (never a pydantic ``ValidationError``, ``KeyError``, ``TypeError``...). Unknown keys,
negative and non-finite numbers, and broken markets must be refused; segments are refused exactly
when they are out of order. Each probe prints its tally.

Reproduce: ``pytest tests/reliability/test_fuzz_config.py -q -s`` (``-m slow`` for the 10,000-example twin).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from supsup_fin.config import Config, MarketConfig, load_config
from supsup_fin.errors import ConfigError

Path_ = tuple[str | int, ...]

BASE: dict[str, Any] = Config(markets=(
    MarketConfig(name="file_m", source="file", path="prices.csv", timezone="Europe/Berlin"),
    MarketConfig(name="syn_m", source="synthetic", dataset="easy", seed=3),
)).model_dump(mode="json")
"""Every key of the tree written out, with its default."""

KINDS = ("unknown", "wrong-type", "negative", "non-finite", "delete", "segments", "markets", "garbage")
REQUIRED = {("markets",), ("markets", 0, "name"), ("markets", 0, "source"), ("markets", 0, "path"),
            ("markets", 1, "name"), ("markets", 1, "source"), ("markets", 1, "dataset")}


def _nodes(tree: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every (path, value) below ``tree``, depth first (dicts and lists included)."""
    out = [(path, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        out += _nodes(v, (*path, k))
    return out


NODES = _nodes(BASE)
SECTIONS = [p for p, v in NODES if isinstance(v, dict)]
KEYS = [p for p, _ in NODES if p and isinstance(p[-1], str)]
LEAVES = [p for p, v in NODES if p and not isinstance(v, dict | list)]
NUMBERS = [p for p, v in NODES if isinstance(v, int | float) and not isinstance(v, bool)]


def dotted(path: Path_) -> str:
    return ".".join(map(str, path))


def _set(tree: dict, path: Path_, value: Any) -> None:
    node = tree
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's, when built: the probe's time goes to the loader
WRONG = ("abc", "", [1, "x"], {"k": 1}, True, -3.5, "2013-13-01", 10**30, None)


def _segments_ordered(seg: dict[str, list]) -> bool:
    order = [seg["train"], seg["valid"], seg["test"]]
    if any(s is not None and e is not None and s > e for s, e in order):
        return False
    return all(end is not None and start is not None and start > end
               for (_, end), (start, _) in zip(order, order[1:]))


@st.composite
def broken_configs(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> tuple[Any, str, str | None, bool]:
    """``(tree or the file's bytes, kind, path the error must name, must it be refused)``."""
    kind = draw(st.sampled_from(kinds))
    tree = copy.deepcopy(BASE)
    if kind == "unknown":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(lambda k: k != "warmup"))
        path = (*section, f"x_{key}")
        _set(tree, path, draw(st.sampled_from(WRONG)))
        return tree, kind, dotted(path), True
    if kind in ("wrong-type", "negative", "non-finite"):
        path = draw(st.sampled_from({"wrong-type": LEAVES, "negative": NUMBERS, "non-finite": NUMBERS}[kind]))
        value = {"wrong-type": lambda: draw(st.sampled_from(WRONG)),
                 "negative": lambda: -draw(st.one_of(st.integers(1, 10**6), st.floats(1e-9, 1e9))),
                 "non-finite": lambda: draw(st.sampled_from((float("inf"), float("-inf"), float("nan"))))}[kind]()
        _set(tree, path, value)
        return tree, kind, dotted(path), kind != "wrong-type"
    if kind == "delete":
        path = draw(st.sampled_from(KEYS))
        _set(tree, path, _DELETE)
        return tree, kind, dotted(path), path in REQUIRED
    if kind == "segments":
        edges: list = sorted(draw(st.lists(st.dates(dt.date(2005, 1, 1), dt.date(2020, 12, 31)), min_size=6,
                                           max_size=6, unique=True)))
        edges[0], edges[5] = draw(st.sampled_from((edges[0], None))), draw(st.sampled_from((edges[5], None)))
        i, j = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        how = draw(st.sampled_from(("ordered", "swap", "open", "touch")))
        if how == "swap":  # an inverted segment or segments out of order
            edges[i], edges[j] = edges[j], edges[i]
        elif how == "open":  # no edge between two segments
            edges[i] = None
        elif how == "touch" and 0 < i < 5:  # a segment starts where the one before ends: overlap
            edges[i + i % 2 * 2 - 1] = edges[i]
        seg = dict(zip(("train", "valid", "test"), (edges[0:2], edges[2:4], edges[4:6])))
        tree["segments"] = {k: [None if d is None else d.isoformat() for d in v] for k, v in seg.items()}
        return tree, kind, "segments", not _segments_ordered(seg)
    if kind == "markets":
        m = tree["markets"][0]
        tree["markets"] = draw(st.sampled_from((
            None, [], "abc", {}, [{}], [{"name": "a"}], [m, m], [{**m, "source": "ftp"}], [{**m, "name": "a b"}],
            [{**m, "source": "yahoo"}], [{**m, "timezone": "Mars/Olympus"}], [{**m, "timezone": 5}])))
        return tree, kind, "markets", True
    raw = draw(st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(("[", "{a: [}", "- 1\n- 2", "markets: !!python/object/apply:os.system [ls]", "&a [*a]",
                         "42", "null", "markets: &m [*m]", "\t markets:", "markets:\n- name: a\n  name: b\n"))
        .map(str.encode)))
    return raw, kind, None, False


def _named(msg: str, path: str) -> bool:
    """``msg`` names ``path`` or one of its ancestors, as the config errors write a key path."""
    parts = path.split(".")
    return any(f"{p}:" in msg or f"'{p}" in msg or f"{p} " in msg or f"{p}." in msg
               for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1)))


def probe_config(n_examples: int, folder: Path) -> Counter:
    """About ``n_examples`` broken configs, shared evenly by mutation kind; the outcome tally."""
    tally: Counter = Counter()
    file = folder / "cfg.yaml"

    for kind in KINDS:
        @settings(max_examples=max(1, n_examples // len(KINDS)))
        @given(example=broken_configs(kinds=(kind,)))
        def run(example: tuple[Any, str, str | None, bool]) -> None:
            tree, kind, path, must_fail = example
            if isinstance(tree, bytes):
                file.write_bytes(tree)
            else:
                file.write_text(yaml.dump(tree, Dumper=DUMPER, allow_unicode=True))
            try:
                cfg = load_config(file)
            except ConfigError as err:
                msg = str(err)
                assert msg.startswith(str(file)) or "cfg.yaml" in msg, msg
                if path is not None:
                    assert _named(msg, path), (kind, path, msg)
                exact = kind in ("unknown", "negative", "non-finite")
                assert not exact or path in msg, (kind, path, msg)
                tally[kind, "ConfigError"] += 1
                return
            assert not must_fail, (kind, path, "accepted")
            assert isinstance(cfg, Config)
            tally[kind, "valid"] += 1

        run()
    rows = "".join(f"\n  {k:11s} {o:12s} {n}" for (k, o), n in sorted(tally.items()))
    print(f"\n{sum(tally.values())} fuzzed configs{rows}")
    return tally


def test_base_tree_is_valid(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text(yaml.safe_dump(BASE))
    loaded = load_config(file).model_dump(mode="json")
    assert loaded["markets"][0]["path"] == str(tmp_path / "prices.csv")  # a relative path: from the config's folder
    loaded["markets"][0]["path"] = BASE["markets"][0]["path"]
    assert loaded == BASE


def test_fuzzed_configs_load_or_name_the_key(tmp_path: Path) -> None:
    tally = probe_config(FUZZ_EXAMPLES, tmp_path)
    assert {k for k, _ in tally} == set(KINDS)
    assert tally["segments", "valid"] > 0 and tally["segments", "ConfigError"] > 0


@pytest.mark.slow
def test_fuzzed_configs_load_or_name_the_key_slow(tmp_path: Path) -> None:
    probe_config(FUZZ_EXAMPLES_SLOW, tmp_path)
