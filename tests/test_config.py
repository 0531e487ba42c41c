from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supsup_fin.config import Config, config_from_dict, demo_config_path, load_config
from supsup_fin.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config) and cfg.markets


def test_demo_config_is_the_shipped_one() -> None:
    assert demo_config_path().read_text() == (CONFIGS / "demo.yaml").read_text()
    assert [m.name for m in load_config(demo_config_path()).markets] == ["sp500", "nasdaq", "wti"]


def test_markets_alone_is_a_valid_config() -> None:
    cfg = config_from_dict({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500"}]})
    assert cfg.features.lookback == 8 and cfg.masks.method == "edge_popup"
    assert cfg.segments.train[1] is not None


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500", "tickr": "X"}]}, "markets.0.tickr"),
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500"}], "training": {"stpes": 3}}, "training.stpes"),
        ({"markets": [{"name": "x", "source": "yahoo"}]}, "needs 'ticker'"),
        ({"markets": []}, "markets"),
        ({}, "missing required key 'markets'"),
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "a"}, {"name": "x", "source": "bundled", "dataset": "b"}]}, "repeated"),
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500"}],
          "segments": {"train": [None, "2014-01-01"], "valid": ["2013-01-01", "2015-01-01"], "test": ["2016-01-01", None]}}, "not after"),
        ({"markets": [{"name": "w", "source": "bundled", "dataset": "wti"}], "features": {"names": ["ret_1", "range_1"]}}, "'range_1' needs columns"),
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500"}], "features": {"names": ["nope"]}}, "unknown ['nope']"),
        ({"markets": [{"name": "x", "source": "bundled", "dataset": "sp500"}], "regimes": {"n_states": 1}}, "regimes.n_states"),
    ],
)
def test_bad_configs_name_the_key(tree: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(tree, where="cfg.yaml")
    assert needle in str(info.value) and str(info.value).startswith("cfg.yaml")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"markets": [{"name": "x", "source": "file", "path": "p.csv", "colour": 1}]}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'markets\.0\.colour'"):
        load_config(bad)


def test_flat_view_has_dotted_keys() -> None:
    flat = load_config(CONFIGS / "demo.yaml").flat()
    assert flat["regimes.n_states"] == [2, 3] and flat["markets.wti.dataset"] == "wti"


MARKET = {"name": "x", "source": "bundled", "dataset": "sp500"}


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"markets": [{**MARKET, "source": "synthetic", "dataset": "easy", "seed": -1}]}, "markets.0.seed"),
        ({"markets": [MARKET], "network": {"seed": -2}}, "network.seed"),
        ({"markets": [MARKET], "training": {"seed": -3}}, "training.seed"),
        ({"markets": [MARKET], "regimes": {"random_state": -4}}, "regimes.random_state"),
        ({"markets": [MARKET], "network": {"hidden": [64, 0]}}, "network.hidden.1"),
        ({"markets": [MARKET], "training": {"checkpoints": [10, -5]}}, "training.checkpoints.1"),
        ({"markets": [MARKET], "training": {"lr": float("inf")}}, "training.lr"),
        ({"markets": [MARKET], "data": {"yahoo": {"backoff_s": float("inf")}}}, "data.yahoo.backoff_s"),
        ({"markets": [MARKET], "features": {"names": []}}, "features.names"),
        ({"markets": [MARKET], "schedule": {"timezone": "Mars/Olympus"}}, "schedule.timezone"),
        ({"markets": [{**MARKET, "timezone": "Europe/Berln"}]}, "markets.0.timezone"),
        ({"markets": [MARKET, MARKET]}, "markets: names must be unique"),
        ({"markets": [{**MARKET, "close": "adj_close"}]}, "close: adj_close applies to source 'file' only"),
        ({"markets": [{"name": "f", "source": "file", "path": "p.csv", "close": "Adj Close"}]}, "markets.0.close"),
    ],
)
def test_values_that_would_fail_later_are_refused_naming_the_key(tree: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(tree, where="cfg.yaml")
    assert needle in str(info.value) and "Value error" not in str(info.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"markets:\n- name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8"):
        load_config(bad)


def test_a_file_markets_relative_path_is_read_from_the_config_files_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    cfg_path = folder / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"markets": [
        {"name": "rel", "source": "file", "path": "data/p.csv"},
        {"name": "abs", "source": "file", "path": str(tmp_path / "q.csv")},
        {"name": "yh", "source": "yahoo", "ticker": "SPY"}]}))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(cfg_path)
    assert cfg.market("rel").path == str(folder / "data" / "p.csv")
    assert cfg.market("abs").path == str(tmp_path / "q.csv")
    assert cfg.market("yh").path is None
