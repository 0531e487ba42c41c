"""runtime.device: what it accepts, what it chooses, and that the device reaches training, the
carry-over key, evaluation and the backtest. No CUDA is needed: torch.cuda is faked where a test
asks what would happen on a GPU machine, and nothing runs on one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import small_config_dict

from supsup_fin.backtest import engine
from supsup_fin.backtest.dense import train_dense
from supsup_fin.config import RuntimeConfig, config_from_dict
from supsup_fin.errors import ConfigError
from supsup_fin.forecaster.evaluate import evaluate
from supsup_fin.forecaster.mask_tasks import Task, device_label, training_device
from supsup_fin.forecaster.training import resolve_device, reusable_masks, train_tasks
from supsup_fin.masks import FrozenNet, Mask, MaskBank

FAKE_GPU = "Fake GPU 141GB"
CUDA = f"cuda ({FAKE_GPU})"
OTHER_CPU = torch.device("cpu", 0)
"""A device that is not the nets' own (``cpu``) yet holds CPU tensors: what a spy sees pass through."""


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch says it sees one CUDA device named FAKE_GPU (nothing may run on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: FAKE_GPU)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _config(device: str):
    return config_from_dict(small_config_dict(runtime={"device": device}))


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_runtime_device_accepts_auto_cpu_cuda_and_cuda_n(name: str) -> None:
    assert _config(name).runtime.device == name


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", "cuda:0 "])
def test_another_device_name_is_a_one_line_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"runtime.device: expected auto, cpu, cuda or cuda:N, got {name!r}" in message
    # the library refuses it too when handed a runtime section that bypassed validation
    with pytest.raises(ConfigError) as err:
        training_device(RuntimeConfig.model_construct(device=name))
    assert str(err.value) == f"runtime.device: expected auto, cpu, cuda or cuda:N, got {name!r}"


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_device_is_a_config_error_saying_what_to_use(no_cuda: None, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(RuntimeConfig(device=name))
    assert type(err.value) is ConfigError
    assert str(err.value) == f"runtime.device is {name!r} but torch sees no CUDA device; use cpu or auto"


def test_a_cuda_index_torch_does_not_see_is_a_config_error(fake_cuda: None) -> None:
    with pytest.raises(ConfigError, match=r"^runtime\.device is 'cuda:1' but torch sees 1 CUDA device\(s\), "
                                          r"cuda:0 to cuda:0; use one of them, cpu or auto$"):
        training_device(RuntimeConfig(device="cuda:1"))


def test_explicit_cpu_stays_on_cpu_where_auto_would_choose_cuda(fake_cuda: None) -> None:
    assert resolve_device(RuntimeConfig(device="cpu")) == torch.device("cpu")
    assert resolve_device(RuntimeConfig(device="auto")) == torch.device("cuda")
    assert resolve_device(RuntimeConfig(device="cuda:0")) == torch.device("cuda", 0)


def test_auto_logs_the_device_it_chose(fake_cuda: None, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="supsup_fin.forecaster.training"):
        resolve_device(RuntimeConfig(device="auto"))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        resolve_device(RuntimeConfig(device="auto"))
        resolve_device(RuntimeConfig(device="cpu"))  # chosen, not guessed: nothing to say
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime.device")]
    assert said == [f"runtime.device auto: {CUDA}", "runtime.device auto: cpu (torch sees no CUDA device)"]


def test_the_device_label_names_cpu_or_cuda_and_the_gpu(fake_cuda: None) -> None:
    assert device_label(torch.device("cpu")) == "cpu"
    assert device_label(torch.device("cuda")) == device_label(torch.device("cuda", 0)) == CUDA


def _task(name: str, device: str | None) -> Task:
    meta = {"market": "m", "regime": name.split("/")[1], "data_hash": "d", "config_hash": "c"}
    if device is not None:
        meta["device"] = device
    x = np.zeros((3, 4), np.float32)
    return Task(name, "m", meta["regime"], x, np.zeros(3, np.int64), meta)


def test_a_mask_trained_on_another_device_is_not_carried_over(caplog: pytest.LogCaptureFixture) -> None:
    net = FrozenNet((4, 3), seed=0)
    bits = Mask([torch.tensor([[True, False, True, False]] * 3)])
    champion = MaskBank(net).extended({t.name: (bits, t.meta) for t in
                                       (_task("m/calm", "cpu"), _task("m/wild", CUDA), _task("m/ALL", None))})
    tasks = [_task(n, "cpu") for n in ("m/calm", "m/wild", "m/ALL")]
    with caplog.at_level(logging.INFO, logger="supsup_fin.forecaster.training"):
        carried = reusable_masks(tasks, champion, net, "v3")
    assert carried.names == ["m/calm"] and carried["m/calm"] is champion["m/calm"]
    assert f"carry-over: 2 masks of v3 were trained on {CUDA}, this retrain trains on cpu: retraining them" \
        in caplog.messages
    on_cuda = [_task(n, CUDA) for n in ("m/calm", "m/wild", "m/ALL")]
    assert reusable_masks(on_cuda, champion, net, "v3").names == ["m/wild"]


def test_masks_record_the_device_they_trained_on() -> None:
    cfg = config_from_dict(small_config_dict(runtime={"device": "cpu", "threads": 1},
                                             training={"steps": 2, "batch_size": 8}))
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    task = Task("m/ALL", "m", "ALL", x, np.arange(12) % 3, {**_task("m/ALL", CUDA).meta})
    _, bank = train_tasks([task], cfg)
    assert bank.meta("m/ALL")["device"] == "cpu"  # where it trained, not what the task expected


def test_tasks_name_the_device_their_masks_train_on(small_pipeline: dict) -> None:
    assert {t.meta["device"] for t in small_pipeline["tasks"]} == {"cpu"}
    assert {small_pipeline["bank"].meta(n)["device"] for n in small_pipeline["bank"].names} == {"cpu"}


def _spy_on_moves(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """The devices nets are moved to from now on (the move still happens)."""
    moves, move = [], FrozenNet.to

    def spy(net: FrozenNet, device: str | torch.device) -> FrozenNet:
        moves.append(torch.device(device))
        return move(net, device)

    monkeypatch.setattr(FrozenNet, "to", spy)
    return moves


def test_evaluation_runs_the_net_on_the_device_it_is_given(small_pipeline: dict,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    p = small_pipeline
    moves = _spy_on_moves(monkeypatch)
    ev = evaluate(p["forecaster"], p["features"], p["regimes"], p["prices"], segments=("valid",), device=OTHER_CPU)
    assert moves == [OTHER_CPU]
    assert p["forecaster"].net.device == torch.device("cpu")  # the caller's forecaster is left as it was
    same = p["evaluation"].tasks[p["evaluation"].tasks.segment == "valid"].reset_index(drop=True)
    assert ev.tasks["log_loss"].tolist() == same["log_loss"].tolist()


def test_the_backtest_trains_and_forecasts_on_the_resolved_device(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cfg = config_from_dict(small_config_dict(
        markets=[{"name": "syn", "source": "synthetic", "dataset": "easy", "seed": 1}],
        features={"lookback": 4, "horizon": 3}, regimes={"n_states": 2}, network={"hidden": [8]},
        training={"steps": 3, "batch_size": 16},
        backtest={"start": "2012-01-02", "end": "2012-02-29", "retrain_every": 200, "bootstrap": 100,
                  "modes": ["hard"], "baselines": ["dense"]}))
    from supsup_fin.data import load_prices

    prices = {"syn": load_prices(cfg.markets[0], cfg.data, tmp_path).frame}
    dense_on = []

    def train_dense_spy(*args, **kwargs):
        bank = train_dense(*args, **kwargs)
        dense_on.append((kwargs["device"], bank.device))
        return bank

    monkeypatch.setattr(engine, "resolve_device", lambda runtime: OTHER_CPU)
    monkeypatch.setattr(engine, "train_dense", train_dense_spy)
    moves = _spy_on_moves(monkeypatch)
    out = engine.run_walk_forward(cfg, prices)
    assert dense_on == [(OTHER_CPU, OTHER_CPU)]
    assert OTHER_CPU in moves  # the window's forecasts ran on the device
    assert out.net.device == torch.device("cpu")
    assert set(out.rows.strategy) >= {"dense", "supsup_hard"}
